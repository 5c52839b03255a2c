//! `Amount` is a u128 split in two u64 words; these conversions are the only way in or out.

use crate::types::v1::Amount;

impl From<u128> for Amount {
    fn from(value: u128) -> Self {
        Self {
            lo: value as u64,
            hi: (value >> 64) as u64,
        }
    }
}

impl From<Amount> for u128 {
    fn from(amount: Amount) -> Self {
        (u128::from(amount.hi) << 64) | u128::from(amount.lo)
    }
}

impl Amount {
    pub fn atomic(&self) -> u128 {
        (*self).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_whole_u128_range() {
        for v in [0u128, 1, u64::MAX as u128, u64::MAX as u128 + 1, u128::MAX] {
            assert_eq!(u128::from(Amount::from(v)), v);
        }
    }
}
