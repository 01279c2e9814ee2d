/// The `Validation` contract's epochs: epoch `e` is
/// `[genesis + e · duration, genesis + (e + 1) · duration)`, in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochClock {
    /// The contract's deployment time.
    pub genesis: u64,
    /// Seconds per epoch; the contract refuses 0.
    pub duration: u64,
}

impl EpochClock {
    /// The epoch at `unix_secs`; a time before genesis (a skewed local clock) reads as 0, as
    /// the contract's first epoch.
    pub fn epoch_at(&self, unix_secs: u64) -> u64 {
        unix_secs.saturating_sub(self.genesis) / self.duration
    }

    /// The epoch now, by this machine's clock.
    pub fn current(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        self.epoch_at(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_start_at_genesis_and_last_one_duration() {
        let clock = EpochClock { genesis: 1_000, duration: 3_600 };
        assert_eq!(clock.epoch_at(1_000), 0);
        assert_eq!(clock.epoch_at(4_599), 0);
        assert_eq!(clock.epoch_at(4_600), 1);
        assert_eq!(clock.epoch_at(1_000 + 7 * 3_600 + 5), 7);
        assert_eq!(clock.epoch_at(0), 0, "before genesis");
    }
}
