//! Sizes on the command line: plain bytes, or a number with a binary suffix.
//!
//! Accepted: `K`, `M`, `G`, `T` and `KiB`, `MiB`, `GiB`, `TiB` (any case), all powers of
//! 1024, and `B` for bytes; a space between number and suffix is allowed (`"1 M"`).
//! Refused: `KB`, `MB`, `GB`, `TB` — some tools read them as powers of 1000, others as powers
//! of 1024, so they would silently mean something else to someone; fractions; and anything
//! above the largest disk strata addresses (`MAX_DISK_SIZE`, 16 TiB - 1 MiB), so every
//! size the CLI accepts is one every layer can serve.

use strata::store::transfer::MAX_DISK_SIZE;

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 1048576, 512M, 20G)"))?;
    let mult: u64 = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KIB" => 1 << 10,
        "M" | "MIB" => 1 << 20,
        "G" | "GIB" => 1 << 30,
        "T" | "TIB" => 1 << 40,
        u @ ("KB" | "MB" | "GB" | "TB") => {
            let bin = &u[..1];
            return Err(format!(
                "{s:?} is ambiguous ({u} means 1000s to some tools, 1024s to others): write \
                 {n}{bin} or {n}{bin}iB for powers of 1024, or the number of bytes"
            ));
        }
        other => {
            return Err(format!(
                "unknown size suffix {other:?} in {s:?} (use K, M, G or T: powers of 1024)"
            ))
        }
    };
    let bytes = n
        .checked_mul(mult)
        .filter(|&b| b <= MAX_DISK_SIZE)
        .ok_or_else(|| {
            format!(
                "{s:?} is too large: the largest disk strata can address is 16 TiB - 1 MiB \
                 ({MAX_DISK_SIZE} bytes)"
            )
        })?;
    Ok(bytes)
}

/// Human-readable binary size.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes_and_refuses_junk() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("1 M").unwrap(), 1 << 20);
        assert_eq!(parse_size("7B").unwrap(), 7);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn decimal_looking_suffixes_are_refused_not_read_as_binary() {
        for s in ["1MB", "1 MB", "4kb", "2GB", "1TB"] {
            let e = parse_size(s).unwrap_err();
            assert!(e.contains("ambiguous"), "{s}: {e}");
        }
    }

    #[test]
    fn sizes_beyond_what_every_layer_addresses_are_refused_with_the_cap() {
        assert!(parse_size("16T").unwrap_err().contains("16 TiB - 1 MiB"));
        assert!(parse_size("9223372036854775808").is_err());
        assert!(parse_size("18446744073709551615").is_err());
        assert_eq!(
            parse_size(&MAX_DISK_SIZE.to_string()).unwrap(),
            MAX_DISK_SIZE
        );
        assert!(parse_size(&(MAX_DISK_SIZE + 1).to_string()).is_err());
        assert_eq!(parse_size("15T").unwrap(), 15 << 40);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(100), "100 B");
        assert_eq!(human(1536), "1.5 KiB");
    }
}
