//! Modes that measure: `time-map` (a token-using bpf() call, before and
//! after a file appears) and `time-mint` (warm mints), each the median of
//! COUNT runs in nanoseconds.

use std::os::fd::AsFd;

use bpftoken::{Client, Kind, MintRequest};
use bpftoken_tests::sys;

use crate::token::{token_from_env, wait_for_file};

/// Median of `count` timings of `f`, in nanoseconds.
fn median_ns(count: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<u128, String> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let start = std::time::Instant::now();
        f()?;
        times.push(start.elapsed().as_nanos());
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

/// `time-map COUNT FILE`: median ns of COUNT array map creates with the
/// token; wait until FILE exists, measure again.
pub fn time_map(args: &[String]) -> Result<(), String> {
    let count: usize = args.get(1).and_then(|c| c.parse().ok()).ok_or("time-map COUNT FILE")?;
    let file = args.get(2).ok_or("time-map COUNT FILE")?;
    let token = token_from_env()?;
    let array = bpftoken::delegation::parse_name(Kind::Map, "array").map_err(|e| e.to_string())?;
    let create = || sys::map_create(array.trailing_zeros(), Some(token.as_fd())).map(drop).map_err(|e| e.to_string());
    println!("median_ns {}", median_ns(count, create)?);
    std::io::Write::flush(&mut std::io::stdout()).map_err(|e| e.to_string())?;
    wait_for_file(file)?;
    println!("median_ns {}", median_ns(count, create)?);
    Ok(())
}

/// `time-mint SOCKET COUNT`: median ns of COUNT mints on one connection.
pub fn time_mint(args: &[String]) -> Result<(), String> {
    let path = std::path::PathBuf::from(args.get(1).ok_or("time-mint SOCKET COUNT")?);
    let count: usize = args.get(2).and_then(|c| c.parse().ok()).ok_or("time-mint SOCKET COUNT")?;
    let mut client = Client::connect_to(&path).map_err(|e| e.to_string())?;
    // The first builds the scope (cold); the rest are warm.
    client.mint(&MintRequest::default()).map_err(|e| e.to_string())?;
    let mint = || client.mint(&MintRequest::default()).map(drop).map_err(|e| e.to_string());
    println!("median_ns {}", median_ns(count, mint)?);
    Ok(())
}
