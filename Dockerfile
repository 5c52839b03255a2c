# One image with the four RunGate services; docker-compose.yml picks the binary.
FROM rust:1.95-bookworm AS build
# llama.cpp is built from source (cmake) with Rust bindings from bindgen (libclang).
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
      -p rungate-edge -p rungate-billing -p rungate-inference -p rungate-ledger

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system rungate
COPY --from=build /src/target/release/rungate-edge /src/target/release/rungate-billing \
     /src/target/release/rungate-inference /src/target/release/rungate-ledger /usr/local/bin/
COPY config /etc/rungate
USER rungate
