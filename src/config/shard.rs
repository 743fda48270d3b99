//! `--shard i/n`: which symbols this process keeps when several processes (on one host or many)
//! split one symbol list between them. A symbol belongs to shard `(murmur2(symbol_id) & 0x7fffffff)
//! % n`, Kafka's own key hash (the Java client's `Utils.murmur2`, seed `0x9747b28c`), so a shard's
//! symbols are fixed by the symbol id alone, are the same on every host and in every version, and
//! map to Kafka partitions exactly as a Java producer (and librdkafka's `murmur2_random`
//! partitioner) would map them. It is not the worker routing hash (`lanes::route`, FNV-1a): the
//! two are independent, so a shard's symbols still spread over all of its workers. Pure.

/// A shard of the symbol list: `index` counted from 0, of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// The most shards a symbol list may be split into.
pub const SHARDS_MAX: u32 = 1024;

impl Shard {
    /// Parses `i/n` (0 ≤ i < n ≤ `SHARDS_MAX`); the error says what was wrong.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (i, n) = text.split_once('/').ok_or_else(|| format!("{text:?} is not of the form i/n"))?;
        let index: u32 = i.trim().parse().map_err(|_| format!("{i:?} (before the /) is not a whole number"))?;
        let count: u32 = n.trim().parse().map_err(|_| format!("{n:?} (after the /) is not a whole number"))?;
        if count == 0 || count > SHARDS_MAX {
            return Err(format!("the shard count must be from 1 to {SHARDS_MAX} (got {count})"));
        }
        if index >= count {
            return Err(format!("shards are numbered from 0 to {} (got {index})", count - 1));
        }
        Ok(Shard { index, count })
    }

    /// Whether `symbol_id` belongs to this shard.
    pub fn keeps(&self, symbol_id: &str) -> bool {
        partition_of(symbol_id.as_bytes(), self.count) == self.index
    }
}

/// Kafka's partition of a key: `toPositive(murmur2(key)) % count`.
pub fn partition_of(key: &[u8], count: u32) -> u32 {
    (murmur2(key) as u32 & 0x7fff_ffff) % count
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), as the signed 32-bit value
/// the Java client computes.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves the hash is the Java client's: the vectors of Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_is_kafkas() {
        let cases: [(&[u8], i32); 7] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
            (b"", 275_646_681),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key), hash, "{}", String::from_utf8_lossy(key));
        }
        // toPositive(-790332482) = 1357151166; % 50 = 16, as Kafka's DefaultPartitioner says.
        assert_eq!(partition_of(b"foobar", 50), 16);
    }

    /// Proves every symbol falls to exactly one shard, and that the split is fairly even.
    #[test]
    fn every_symbol_is_in_exactly_one_shard() {
        let shards: Vec<Shard> = (0..3).map(|i| Shard { index: i, count: 3 }).collect();
        let mut sizes = [0usize; 3];
        for n in 0..3_000 {
            let symbol = format!("EXCHANGE_SPOT_COIN{n}_USD");
            let owners: Vec<u32> = shards.iter().filter(|s| s.keeps(&symbol)).map(|s| s.index).collect();
            assert_eq!(owners.len(), 1, "{symbol}: {owners:?}");
            sizes[owners[0] as usize] += 1;
        }
        assert!(sizes.iter().all(|&n| (900..=1100).contains(&n)), "{sizes:?}");
        assert!(Shard { index: 0, count: 1 }.keeps("ANY"));
    }

    #[test]
    fn parses_i_of_n_and_explains_refusals() {
        assert_eq!(Shard::parse("0/3"), Ok(Shard { index: 0, count: 3 }));
        assert_eq!(Shard::parse(" 2 / 3 "), Ok(Shard { index: 2, count: 3 }));
        for (text, part) in [
            ("3/3", "from 0 to 2"),
            ("1/0", "from 1 to"),
            ("1", "i/n"),
            ("a/3", "before the /"),
            ("1/x", "after the /"),
            ("-1/3", "before"),
            ("0/5000", "from 1 to 1024"),
        ] {
            let e = Shard::parse(text).expect_err(text);
            assert!(e.contains(part), "{text}: {e}");
        }
    }
}
