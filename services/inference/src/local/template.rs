//! Chat messages → prompt text with the model's own chat template. The GGUF's
//! Jinja template is rendered with minijinja (exact, as llama.cpp's server does
//! with --jinja); llama.cpp's built-in template matcher is the fallback for
//! templates minijinja cannot run, and ChatML for models without a template.

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use minijinja::{Environment, Error, ErrorKind, context};
use rungate_proto::inference::v1::ChatMessage;

use crate::InferenceError;

pub struct ChatTemplate {
    jinja: Option<Environment<'static>>,
    builtin: Option<LlamaChatTemplate>,
    bos: String,
    eos: String,
}

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Roles local templates know; `developer` is OpenAI's newer name for `system`.
fn role(message: &ChatMessage) -> &str {
    match message.role.as_str() {
        "developer" => "system",
        other => other,
    }
}

impl ChatTemplate {
    pub fn new(model: &LlamaModel, source: Option<String>) -> Self {
        let jinja = source.and_then(|source| {
            let mut env = Environment::new();
            env.add_function("raise_exception", raise_exception);
            match env.add_template_owned("chat", source) {
                Ok(()) => Some(env),
                Err(error) => {
                    tracing::warn!(%error, "chat template is not valid minijinja; using llama.cpp's matcher");
                    None
                }
            }
        });
        let builtin = model
            .chat_template(None)
            .or_else(|_| LlamaChatTemplate::new("chatml").map_err(|_| ()))
            .ok();
        let vocab = model.vocab();
        let text = |token| {
            vocab
                .text(token)
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        Self {
            jinja,
            builtin,
            bos: text(vocab.bos()),
            eos: text(vocab.eos()),
        }
    }

    pub fn bos(&self) -> &str {
        &self.bos
    }

    pub fn render(
        &self,
        model: &LlamaModel,
        messages: &[ChatMessage],
    ) -> Result<String, InferenceError> {
        if let Some(env) = &self.jinja {
            let messages: Vec<_> = messages
                .iter()
                .map(|m| context! { role => role(m), content => &m.content, name => &m.name })
                .collect();
            let rendered = env.get_template("chat").and_then(|t| {
                t.render(context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => &self.bos,
                    eos_token => &self.eos,
                })
            });
            match rendered {
                Ok(prompt) => return Ok(prompt),
                Err(error) if error.kind() == ErrorKind::InvalidOperation => {
                    // The template itself refused these messages (raise_exception).
                    return Err(InferenceError::InvalidArgument {
                        param: "messages",
                        message: format!("the model's chat template refused the messages: {error}"),
                    });
                }
                Err(error) => {
                    tracing::debug!(%error, "minijinja could not render; using llama.cpp's matcher");
                }
            }
        }
        let builtin = self.builtin.as_ref().ok_or_else(|| {
            InferenceError::Config("the model has no usable chat template".into())
        })?;
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(role(m).to_owned(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| InferenceError::InvalidArgument {
                param: "messages",
                message: "message content must not contain NUL characters".into(),
            })?;
        model
            .apply_chat_template(builtin, &chat, true)
            .map_err(|e| InferenceError::Config(format!("chat template failed: {e}")))
    }
}
