//! A node's crash-safe record of what each channel owes it: the latest voucher, the usage
//! metered against it and what the chain has paid. Every write is a durable redb commit, so
//! a voucher acknowledged to a payer survives `kill -9` and is redeemed after a restart.

use std::collections::HashMap;
use std::path::Path;

use alloy::primitives::{Address, B256, Bytes, U256};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::meter::{SETTLED_TERMS_BYTES, Tariff, decode_settled_terms, encode_settled_terms};
use super::store::{self, StoreError};
use super::{SignedVoucher, Voucher};
use crate::blocking::without_stalling;

/// channel id (32 bytes, big-endian) → [`ChannelRecord::encode`].
const CHANNELS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("channels");

/// channel id → the block of a redemption not yet final: kept on disk so that a restart
/// inside the confirmation window still re-checks it.
const PENDING: TableDefinition<&[u8; 32], u64> = TableDefinition::new("pending_redemptions");

/// Bytes of a record's payer, metering and redeemed amount.
const LEGACY_BARE: usize = 20 + 8 + 32;
/// Bytes of its voucher.
const VOUCHER_BYTES: usize = 32 + 65;
const TERMS_AND_VOUCHER: usize = SETTLED_TERMS_BYTES + VOUCHER_BYTES;

/// What a node knows about one channel paying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRecord {
    pub payer: Address,
    /// The highest valid voucher received.
    pub voucher: Option<SignedVoucher>,
    /// Block-tokens served on the channel under `terms` (as of the last write).
    pub metered: u64,
    /// What the channel has paid this node on-chain (as of the last redemption or read).
    pub redeemed: U256,
    /// Wei owed for block-tokens served under earlier terms (`payments.md`, "Price changes").
    pub settled: U256,
    /// The terms `metered` is priced at; `None` in a ledger written before terms were kept
    /// (the node's terms at start apply).
    pub terms: Option<Tariff>,
}

impl ChannelRecord {
    /// The voucher's amount, 0 without one.
    pub fn vouched(&self) -> U256 {
        self.voucher.as_ref().map_or(U256::ZERO, |v| v.voucher.cumulative_amount)
    }

    /// What the channel owes for everything metered: `settled` plus `metered` at `terms`.
    pub fn owed(&self, terms: Tariff) -> U256 {
        self.settled + self.terms.unwrap_or(terms).amount(self.metered)
    }

    // Layout: payer 20 ‖ metered u64 LE ‖ redeemed 32 ‖ settled 32 ‖ price 32 ‖ span u16 LE
    // ‖ [amount 32 ‖ signature 65]. Ledgers written before terms were kept lack the settled,
    // price and span fields (60 or 157 bytes).
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEGACY_BARE + SETTLED_TERMS_BYTES + VOUCHER_BYTES);
        out.extend_from_slice(self.payer.as_slice());
        out.extend_from_slice(&self.metered.to_le_bytes());
        out.extend_from_slice(&self.redeemed.to_be_bytes::<32>());
        if let Some(terms) = self.terms {
            encode_settled_terms(self.settled, terms, &mut out);
        }
        if let Some(v) = &self.voucher {
            out.extend_from_slice(&v.voucher.cumulative_amount.to_be_bytes::<32>());
            out.extend_from_slice(&v.signature);
        }
        out
    }

    fn decode(channel_id: U256, bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("channel {channel_id}"));
        let with_terms = match bytes.len().checked_sub(LEGACY_BARE) {
            Some(0 | VOUCHER_BYTES) => false,
            Some(SETTLED_TERMS_BYTES) | Some(TERMS_AND_VOUCHER) => true,
            _ => return Err(corrupt()),
        };
        let (settled, terms, rest) = if with_terms {
            let (fields, rest) = bytes[LEGACY_BARE..].split_at(SETTLED_TERMS_BYTES);
            let (settled, terms) = decode_settled_terms(fields).ok_or_else(corrupt)?;
            (settled, Some(terms), rest)
        } else {
            (U256::ZERO, None, &bytes[LEGACY_BARE..])
        };
        let voucher = (!rest.is_empty()).then(|| SignedVoucher {
            voucher: Voucher { channel_id, cumulative_amount: U256::from_be_slice(&rest[..32]) },
            signature: Bytes::copy_from_slice(&rest[32..]),
        });
        Ok(Self {
            payer: Address::from_slice(&bytes[..20]),
            metered: u64::from_le_bytes(bytes[20..28].try_into().map_err(|_| corrupt())?),
            redeemed: U256::from_be_slice(&bytes[28..60]),
            voucher,
            settled,
            terms,
        })
    }
}

/// The node's payment ledger file.
pub struct Ledger {
    db: Database,
}

impl Ledger {
    /// Opens (or creates) the ledger at `path` for the deployment `fingerprint`
    /// ([`crate::chain::deployment_fingerprint`]).
    pub fn open(path: &Path, fingerprint: B256) -> Result<Self, StoreError> {
        Ok(Self { db: store::open(path, fingerprint, CHANNELS)? })
    }

    /// Opens an existing ledger whatever its deployment, to read it.
    pub fn inspect(path: &Path) -> Result<Self, StoreError> {
        Ok(Self { db: Database::open(path).map_err(redb::Error::from)? })
    }

    /// Writes one channel's record durably (fsync before returning).
    pub fn put(&self, channel_id: U256, record: &ChannelRecord) -> Result<(), StoreError> {
        self.put_all([(channel_id, record)])
    }

    /// Writes several channels' records in one durable commit, without stalling the async
    /// tasks that share the calling worker thread (see [`without_stalling`]).
    pub fn put_all<'a>(
        &self,
        records: impl IntoIterator<Item = (U256, &'a ChannelRecord)>,
    ) -> Result<(), StoreError> {
        without_stalling(|| {
            let txn = self.db.begin_write()?;
            {
                let mut table = txn.open_table(CHANNELS)?;
                for (channel_id, record) in records {
                    table.insert(&channel_id.to_be_bytes::<32>(), record.encode().as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// One channel's record.
    pub fn get(&self, channel_id: U256) -> Result<Option<ChannelRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CHANNELS)?;
        let value = table.get(&channel_id.to_be_bytes::<32>())?;
        value.map(|v| ChannelRecord::decode(channel_id, v.value())).transpose()
    }

    /// Records that `channels` were redeemed in `block`, until [`Ledger::unconfirmed`] sees
    /// the block final.
    pub fn redeemed_in(
        &self,
        channels: impl IntoIterator<Item = U256>,
        block: u64,
    ) -> Result<(), StoreError> {
        without_stalling(|| {
            let txn = self.db.begin_write()?;
            {
                let mut table = txn.open_table(PENDING)?;
                for channel in channels {
                    table.insert(&channel.to_be_bytes::<32>(), block)?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// The redemptions not yet `depth` blocks deep at block `head` (channel → block); those
    /// that now are, are forgotten.
    pub fn unconfirmed(&self, head: u64, depth: u64) -> Result<HashMap<U256, u64>, StoreError> {
        let mut pending = HashMap::new();
        {
            let txn = self.db.begin_read()?;
            let table = match txn.open_table(PENDING) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(pending),
                Err(e) => return Err(redb::Error::from(e).into()),
            };
            for entry in table.iter()? {
                let (key, block) = entry?;
                pending.insert(U256::from_be_bytes(*key.value()), block.value());
            }
        }
        let is_final = |block: u64| head.saturating_add(1) >= block.saturating_add(depth.max(1));
        let settled: Vec<U256> =
            pending.iter().filter(|(_, block)| is_final(**block)).map(|(id, _)| *id).collect();
        if !settled.is_empty() {
            without_stalling(|| {
                let txn = self.db.begin_write()?;
                {
                    let mut table = txn.open_table(PENDING)?;
                    for channel in &settled {
                        table.remove(&channel.to_be_bytes::<32>())?;
                    }
                }
                txn.commit()?;
                Ok::<_, StoreError>(())
            })?;
            pending.retain(|_, block| !is_final(*block));
        }
        Ok(pending)
    }

    /// Every channel's record, by channel id.
    pub fn all(&self) -> Result<Vec<(U256, ChannelRecord)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CHANNELS)?;
        let mut records = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let id = U256::from_be_bytes(*key.value());
            records.push((id, ChannelRecord::decode(id, value.value())?));
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let record = ChannelRecord {
            payer: Address::repeat_byte(7),
            voucher: Some(SignedVoucher {
                voucher: Voucher { channel_id: U256::from(3), cumulative_amount: U256::from(99) },
                signature: Bytes::from(vec![5u8; 65]),
            }),
            metered: 1234,
            redeemed: U256::from(40),
            settled: U256::from(17),
            terms: Some(Tariff { price_per_token: U256::from(6), span_blocks: 2 }),
        };
        let bare = ChannelRecord { voucher: None, ..record.clone() };
        let legacy = ChannelRecord {
            settled: U256::ZERO,
            terms: None,
            voucher: record.voucher.clone().map(|mut v| {
                v.voucher.channel_id = U256::from(6);
                v
            }),
            ..record.clone()
        };
        let legacy_bare = ChannelRecord { voucher: None, ..legacy.clone() };
        let deployment = B256::repeat_byte(1);
        {
            let ledger = Ledger::open(&path, deployment).unwrap();
            ledger.put(U256::from(3), &record).unwrap();
            ledger.put(U256::from(4), &bare).unwrap();
            ledger.put(U256::from(6), &legacy).unwrap();
            ledger.put(U256::from(7), &legacy_bare).unwrap();
        }
        assert!(matches!(
            Ledger::open(&path, B256::repeat_byte(2)),
            Err(StoreError::OtherDeployment { .. })
        ));
        let ledger = Ledger::open(&path, deployment).unwrap();
        assert_eq!(ledger.get(U256::from(3)).unwrap(), Some(record.clone()));
        assert_eq!(ledger.get(U256::from(5)).unwrap(), None);
        // Records of a ledger written before terms were kept (no settled, price or span).
        assert_eq!(ChannelRecord::decode(U256::from(6), &legacy.encode()[..]).unwrap(), legacy);
        assert_eq!(legacy.encode().len(), 157);
        assert_eq!(legacy_bare.encode().len(), 60);
        assert_eq!(
            record.owed(Tariff { price_per_token: U256::from(1), span_blocks: 1 }),
            U256::from(17 + 3702)
        );
        assert_eq!(
            ledger.all().unwrap(),
            vec![
                (U256::from(3), record),
                (U256::from(4), bare),
                (U256::from(6), legacy),
                (U256::from(7), legacy_bare)
            ]
        );
    }

    #[test]
    fn pending_redemptions_survive_reopening_until_final() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let deployment = B256::repeat_byte(1);
        {
            let ledger = Ledger::open(&path, deployment).unwrap();
            assert!(ledger.unconfirmed(100, 12).unwrap().is_empty(), "none before any");
            ledger.redeemed_in([U256::from(3), U256::from(4)], 100).unwrap();
            ledger.redeemed_in([U256::from(5)], 105).unwrap();
        }
        let ledger = Ledger::open(&path, deployment).unwrap();
        let all = HashMap::from([(U256::from(3), 100), (U256::from(4), 100), (U256::from(5), 105)]);
        assert_eq!(ledger.unconfirmed(110, 12).unwrap(), all);
        // Block 100 with 12 confirmations is final at head 111; 105 at 116.
        assert_eq!(ledger.unconfirmed(111, 12).unwrap(), HashMap::from([(U256::from(5), 105)]));
        assert_eq!(ledger.unconfirmed(110, 12).unwrap().len(), 1, "forgotten for good");
        assert!(ledger.unconfirmed(116, 12).unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        std::fs::write(&path, vec![0xAB; 4096]).unwrap();
        assert!(Ledger::open(&path, B256::ZERO).is_err());
    }
}
