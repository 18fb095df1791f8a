//! What libbpf's object loader needs from a token beyond the types of the
//! object it loads, so that `bpftoken run` (libbpf mode) can add it to a
//! narrowed request (docs/usage.md, "Narrowing a request for a libbpf
//! tool").
//!
//! Before it loads an object with a token, libbpf (1.4, when it learnt
//! tokens, through 1.5 and later) probes kernel features with that token
//! (`src/features.c`, `bpf_object__probe_loading`): most probes load a
//! trivial `socket_filter` program (attach type 0, `cgroup_inet_ingress`),
//! and the probes for global variables, mmap-able arrays and
//! `BPF_PROG_BIND_MAP` also create an `array` map. libbpf reads a refused
//! probe as "this kernel lacks the feature": without the global-variable
//! feature it skips creating `.data`/`.rodata`/`.bss`, and the load then
//! fails in the verifier ("fd N is not pointing to valid bpf_map").
//! Probes of tracing features (tracepoint and kprobe programs) and of
//! cgroup attach types matter only to objects of those types, whose
//! requests name them anyway; they are never added. Neither are commands:
//! a request without `map_create` cannot create an object's maps anyway.

use crate::{Delegation, Kind, MintRequest};

/// `BPF_PROG_LOAD`: without it nothing is probed.
const PROG_LOAD: u64 = 1 << 5;

/// What libbpf's probes need: map type `array` (2), program type
/// `socket_filter` (1), attach type `cgroup_inet_ingress` (0).
pub const PROBE_NEEDS: Delegation = Delegation { cmds: 0, maps: 1 << 2, progs: 1 << 1, attachs: 1 << 0 };

/// What to add to `request` for libbpf's probes, given the policy's
/// `grant`: in each set the request narrows, what the probes need, the
/// policy grants and the request leaves out. Nothing when the request
/// narrows no set or cannot load programs.
pub fn probe_additions(request: &MintRequest, grant: &Delegation) -> Delegation {
    let mut add = Delegation::NONE;
    if request.cmds.unwrap_or(grant.cmds) & PROG_LOAD == 0 {
        return add;
    }
    for kind in [Kind::Map, Kind::Prog, Kind::Attach] {
        let asked = match kind {
            Kind::Map => request.maps,
            Kind::Prog => request.progs,
            _ => request.attachs,
        };
        if let Some(asked) = asked {
            add.set(kind, PROBE_NEEDS.get(kind) & grant.get(kind) & !asked);
        }
    }
    add
}

/// `request` with `add` added to the sets it narrows.
pub fn widened(request: &MintRequest, add: &Delegation) -> MintRequest {
    let or = |asked: Option<u64>, extra: u64| asked.map(|a| a | extra);
    MintRequest {
        cmds: request.cmds,
        maps: or(request.maps, add.maps),
        progs: or(request.progs, add.progs),
        attachs: or(request.attachs, add.attachs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delegation::parse_list;

    fn grant() -> Delegation {
        Delegation {
            cmds: parse_list(Kind::Cmd, "map_create,prog_load,btf_load").unwrap(),
            maps: parse_list(Kind::Map, "array,hash,ringbuf").unwrap(),
            progs: parse_list(Kind::Prog, "socket_filter,tracepoint,kprobe").unwrap(),
            attachs: parse_list(Kind::Attach, "cgroup_inet_ingress").unwrap(),
        }
    }

    #[test]
    fn a_narrowed_set_gets_what_the_probes_need_and_the_policy_grants() {
        let request = MintRequest {
            progs: Some(parse_list(Kind::Prog, "tracepoint").unwrap()),
            maps: Some(parse_list(Kind::Map, "ringbuf").unwrap()),
            ..MintRequest::default()
        };
        let add = probe_additions(&request, &grant());
        assert_eq!(add, Delegation { cmds: 0, maps: 1 << 2, progs: 1 << 1, attachs: 0 });
        let w = widened(&request, &add);
        assert_eq!(w.progs, Some(parse_list(Kind::Prog, "tracepoint,socket_filter").unwrap()));
        assert_eq!(w.maps, Some(parse_list(Kind::Map, "ringbuf,array").unwrap()));
        assert_eq!((w.cmds, w.attachs), (None, None));
    }

    #[test]
    fn nothing_is_added_beyond_the_policy_or_to_sets_left_whole() {
        let mut g = grant();
        g.progs = parse_list(Kind::Prog, "tracepoint").unwrap();
        let request = MintRequest { progs: Some(g.progs), ..MintRequest::default() };
        assert!(probe_additions(&request, &g).is_empty());
        assert!(probe_additions(&MintRequest::default(), &grant()).is_empty());
        // Already there: nothing to add.
        let request = MintRequest { progs: Some(grant().progs), attachs: Some(1), ..MintRequest::default() };
        assert!(probe_additions(&request, &grant()).is_empty());
    }

    #[test]
    fn a_request_that_cannot_load_programs_probes_nothing() {
        let request = MintRequest {
            cmds: Some(parse_list(Kind::Cmd, "map_create").unwrap()),
            maps: Some(parse_list(Kind::Map, "hash").unwrap()),
            ..MintRequest::default()
        };
        assert!(probe_additions(&request, &grant()).is_empty());
    }
}
