//! Tracing modes: `attach-tracepoint` and `attach-kprobe` load a program
//! with $BPF_TOKEN_FD, attach it to the perf event the daemon opens and
//! count its runs; `open-perf` only asks for the event.

use std::os::fd::AsFd;

use bpftoken::Client;
use bpftoken_tests::sys;

use crate::token::{errno_name, token_from_env};

/// Load a `prog_type` program with $BPF_TOKEN_FD, attach it to the
/// daemon's perf event on `target`, run `trigger` `count` times; print
/// `attached` and `run_cnt N`, or the step that failed.
fn attach_and_count(
    client: &mut Client,
    prog_type: u32,
    target: &bpftoken::TraceTarget,
    count: u32,
    trigger: impl Fn(),
) -> Result<(), String> {
    let token = token_from_env()?;
    let prog = match sys::prog_load(prog_type, Some(token.as_fd())) {
        Ok(p) => p,
        Err(e) => {
            println!("prog_load {}", errno_name(&e));
            return Ok(());
        }
    };
    let event = match client.open_perf_event(target, None) {
        Ok(ev) => ev,
        Err(e) => {
            println!("open_perf_event: {e}");
            return Ok(());
        }
    };
    let _link = match sys::attach_perf_event(prog.as_fd(), event.fd.as_fd()) {
        Ok(link) => link,
        Err(e) => {
            println!("link_create {}", errno_name(&e));
            return Ok(());
        }
    };
    println!("attached");
    for _ in 0..count {
        trigger();
    }
    println!("run_cnt {}", sys::prog_run_count(prog.as_fd()).map_err(|e| e.to_string())?);
    Ok(())
}

/// `attach-tracepoint SOCKET CATEGORY:NAME COUNT`: load a tracepoint
/// program with $BPF_TOKEN_FD, ask the daemon for the tracepoint's id and
/// perf event, attach with BPF_LINK_CREATE, call getpid COUNT times, print
/// `id N`, `attached`, `run_cnt N` (or the failing step).
pub fn attach_tracepoint(args: &[String]) -> Result<(), String> {
    let usage = "attach-tracepoint SOCKET CATEGORY:NAME COUNT";
    let path = args.get(1).ok_or(usage)?;
    let (category, name) = args.get(2).and_then(|t| t.split_once(':')).ok_or(usage)?;
    let count: u32 = args.get(3).and_then(|c| c.parse().ok()).ok_or(usage)?;
    let mut client = Client::connect_to(std::path::Path::new(path)).map_err(|e| e.to_string())?;
    match client.tracepoint_id(category, name) {
        Ok(id) => println!("id {}", id.id),
        Err(e) => {
            println!("tracepoint_id: {e}");
            return Ok(());
        }
    }
    let target = bpftoken::TraceTarget::Tracepoint { category: category.to_owned(), name: name.to_owned() };
    // BPF_PROG_TYPE_TRACEPOINT; getpid(2) itself each time (rustix
    // does not cache it).
    attach_and_count(&mut client, 5, &target, count, || {
        let _ = rustix::process::getpid();
    })
}

/// `attach-kprobe SOCKET SYMBOL COUNT`: the same for a kprobe program on
/// SYMBOL, triggered by COUNT opens of /dev/null (for do_sys_openat2).
pub fn attach_kprobe(args: &[String]) -> Result<(), String> {
    let usage = "attach-kprobe SOCKET SYMBOL COUNT";
    let path = args.get(1).ok_or(usage)?;
    let symbol = args.get(2).ok_or(usage)?;
    let count: u32 = args.get(3).and_then(|c| c.parse().ok()).ok_or(usage)?;
    let mut client = Client::connect_to(std::path::Path::new(path)).map_err(|e| e.to_string())?;
    let target = bpftoken::TraceTarget::Kprobe { symbol: symbol.clone(), offset: 0, retprobe: false };
    // BPF_PROG_TYPE_KPROBE, triggered by opens (do_sys_openat2).
    attach_and_count(&mut client, 2, &target, count, || drop(std::fs::File::open("/dev/null")))
}

/// `open-perf SOCKET KIND TARGET`: ask for a perf event: KIND tracepoint
/// (CAT:NAME), kprobe/kretprobe (SYMBOL), uprobe/uretprobe
/// (PATH[:OFFSET][@PID]); print `opened` or the refusal.
pub fn open_perf(args: &[String]) -> Result<(), String> {
    let usage = "open-perf SOCKET KIND TARGET";
    let path = args.get(1).ok_or(usage)?;
    let kind = args.get(2).ok_or(usage)?;
    let spec = args.get(3).ok_or(usage)?;
    let (spec, pid) = match spec.split_once('@') {
        Some((s, p)) => (s, Some(p.parse::<i32>().map_err(|_| usage)?)),
        None => (spec.as_str(), None),
    };
    let target = match kind.as_str() {
        "tracepoint" => {
            let (category, name) = spec.split_once(':').ok_or(usage)?;
            bpftoken::TraceTarget::Tracepoint { category: category.into(), name: name.into() }
        }
        "kprobe" | "kretprobe" => {
            bpftoken::TraceTarget::Kprobe { symbol: spec.to_owned(), offset: 0, retprobe: kind == "kretprobe" }
        }
        "uprobe" | "uretprobe" => {
            let (file, offset) = match spec.rsplit_once(':') {
                Some((f, o)) => (f, u64::from_str_radix(o.trim_start_matches("0x"), 16).map_err(|_| usage)?),
                None => (spec, 0),
            };
            bpftoken::TraceTarget::Uprobe { path: file.to_owned(), offset, retprobe: kind == "uretprobe" }
        }
        _ => return Err(usage.into()),
    };
    let mut client = Client::connect_to(std::path::Path::new(path)).map_err(|e| e.to_string())?;
    match client.open_perf_event(&target, pid) {
        Ok(_) => println!("opened"),
        Err(e) => println!("{e}"),
    }
    Ok(())
}
