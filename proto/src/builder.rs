//! [`MintRequestBuilder`]: a [`MintRequest`] from the kernel's names, as
//! the policy and the CLI spell them (`map_create`, `array`, `xdp`,
//! `cgroup_inet_ingress`). Only builds the plain struct: the wire format
//! is [`MintRequest`]'s. An unknown name is kept until
//! [`MintRequestBuilder::build`], so a chain of calls reports the first
//! mistake in one place.
//!
//! The examples here say `bpftoken::`, the client crate that re-exports
//! these types, because that is where users meet them.

use crate::delegation::{self, Kind, UnknownName};
use crate::message::MintRequest;

/// Builds a [`MintRequest`]: each call narrows one set to the names given
/// (calling it again adds names to that set); a set never named stays
/// "everything my policy grants in it". Asking for more than the policy
/// grants is refused by the daemon, never cut down.
///
/// ```
/// # use bpftoken_proto as bpftoken;
/// use bpftoken::{Kind, MintRequest};
///
/// let request = MintRequest::builder()
///     .cmds(["map_create", "prog_load"])
///     .maps(["array"])
///     .progs(["socket_filter"])
///     .attachs(["cgroup_inet_ingress"]) // a plain program load's attach type
///     .build()?;
/// assert_eq!(request.maps, Some(1 << 2)); // BPF_MAP_TYPE_ARRAY is 2
/// assert_eq!(request.names(Kind::Cmd), Some(vec!["map_create".to_owned(), "prog_load".to_owned()]));
///
/// // A misspelt name is an error naming it, not a narrower token.
/// let err = MintRequest::builder().maps(["ringbuff"]).build().unwrap_err();
/// assert_eq!(err.to_string(), "unknown map type \"ringbuff\"");
/// # Ok::<(), bpftoken::UnknownName>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "a builder does nothing until .build()"]
pub struct MintRequestBuilder {
    request: MintRequest,
    /// The first unknown name, reported by `build`.
    error: Option<UnknownName>,
}

impl MintRequest {
    /// Start a [`MintRequestBuilder`]. `MintRequest::default()` (or a
    /// builder with nothing named) asks for everything the policy grants.
    ///
    /// ```
    /// # use bpftoken_proto as bpftoken;
    /// use bpftoken::MintRequest;
    ///
    /// assert_eq!(MintRequest::builder().build(), Ok(MintRequest::default()));
    /// ```
    pub fn builder() -> MintRequestBuilder {
        MintRequestBuilder::default()
    }

    /// The names a narrowed set asks for (`None`: the set is not narrowed),
    /// canonical kernel names in enum order; a bit without a name prints as
    /// `#N`, every bit as `any`.
    ///
    /// ```
    /// # use bpftoken_proto as bpftoken;
    /// use bpftoken::{Kind, MintRequest};
    ///
    /// let request = MintRequest::builder().progs(["xdp", "socket_filter"]).build()?;
    /// assert_eq!(request.names(Kind::Prog), Some(vec!["socket_filter".to_owned(), "xdp".to_owned()]));
    /// assert_eq!(request.names(Kind::Map), None);
    /// # Ok::<(), bpftoken::UnknownName>(())
    /// ```
    pub fn names(&self, kind: Kind) -> Option<Vec<String>> {
        self.get(kind).map(|mask| delegation::names(kind, mask))
    }

    /// The mask of one set, as [`MintRequest::cmds`] and its siblings hold it.
    pub fn get(&self, kind: Kind) -> Option<u64> {
        match kind {
            Kind::Cmd => self.cmds,
            Kind::Map => self.maps,
            Kind::Prog => self.progs,
            Kind::Attach => self.attachs,
        }
    }

    fn slot(&mut self, kind: Kind) -> &mut Option<u64> {
        match kind {
            Kind::Cmd => &mut self.cmds,
            Kind::Map => &mut self.maps,
            Kind::Prog => &mut self.progs,
            Kind::Attach => &mut self.attachs,
        }
    }
}

impl MintRequestBuilder {
    /// Narrow the commands (`bpf_cmd` without `BPF_`, lowercase):
    /// `map_create`, `prog_load`, `btf_load`, `link_create`, ...
    pub fn cmds<I, S>(self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.names(Kind::Cmd, names)
    }

    /// Narrow the map types (`bpf_map_type` without `BPF_MAP_TYPE_`):
    /// `array`, `hash`, `ringbuf`, ...
    pub fn maps<I, S>(self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.names(Kind::Map, names)
    }

    /// Narrow the program types (`bpf_prog_type` without
    /// `BPF_PROG_TYPE_`): `socket_filter`, `xdp`, `tracepoint`, ...
    pub fn progs<I, S>(self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.names(Kind::Prog, names)
    }

    /// Narrow the attach types (`bpf_attach_type` without `BPF_`):
    /// `cgroup_inet_ingress` (0, also what a plain program load asks
    /// for), `xdp`, `trace_fentry`, ...
    pub fn attachs<I, S>(self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.names(Kind::Attach, names)
    }

    /// Narrow the set `kind` to `names` (added to names given before);
    /// `any` stands for every bit.
    pub fn names<I, S>(mut self, kind: Kind, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut mask = 0;
        for name in names {
            match delegation::parse_name(kind, name.as_ref()) {
                Ok(bit) => mask |= bit,
                Err(e) => {
                    self.error.get_or_insert(e);
                }
            }
        }
        self.mask(kind, mask)
    }

    /// Narrow the set `kind` by a raw mask (bit `n` is the kernel enum's
    /// value `n`, as in the bpffs `delegate_*` options), added to what was
    /// asked before.
    ///
    /// ```
    /// # use bpftoken_proto as bpftoken;
    /// use bpftoken::{Kind, MintRequest};
    ///
    /// const BPF_MAP_CREATE: u32 = 0; // from the kernel's uapi or libbpf-sys
    /// let request = MintRequest::builder().mask(Kind::Cmd, 1 << BPF_MAP_CREATE).build()?;
    /// assert_eq!(request.cmds, Some(1));
    /// # Ok::<(), bpftoken::UnknownName>(())
    /// ```
    pub fn mask(mut self, kind: Kind, mask: u64) -> Self {
        let slot = self.request.slot(kind);
        *slot = Some(slot.unwrap_or(0) | mask);
        self
    }

    /// The request, or the first unknown name given.
    pub fn build(self) -> Result<MintRequest, UnknownName> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delegation::ANY;

    #[test]
    fn each_set_narrows_independently_and_calls_add_up() {
        let r = MintRequest::builder().cmds(["map_create"]).cmds(vec![String::from("prog_load")]).build().unwrap();
        assert_eq!(r, MintRequest { cmds: Some(1 | (1 << 5)), ..MintRequest::default() });
        let r = MintRequest::builder().attachs(["any"]).maps(Vec::<&str>::new()).build().unwrap();
        assert_eq!(r, MintRequest { maps: Some(0), attachs: Some(ANY), ..MintRequest::default() });
    }

    #[test]
    fn the_first_unknown_name_is_the_error() {
        let e = MintRequest::builder().progs(["xdp", "xdpp"]).maps(["hash", "hashh"]).build().unwrap_err();
        assert_eq!(e, UnknownName { kind: Kind::Prog, name: "xdpp".into() });
        assert_eq!(e.to_string(), "unknown program type \"xdpp\"");
        // A name of another set is not a name of this one.
        let e = MintRequest::builder().cmds(["array"]).build().unwrap_err();
        assert_eq!(e.to_string(), "unknown command \"array\"");
    }

    #[test]
    fn names_read_back_canonically() {
        let r = MintRequest::builder().cmds(["prog_run"]).mask(Kind::Map, 1 << 63).build().unwrap();
        assert_eq!(r.names(Kind::Cmd), Some(vec!["prog_test_run".to_owned()]));
        assert_eq!(r.names(Kind::Map), Some(vec!["#63".to_owned()]));
        assert_eq!(r.names(Kind::Attach), None);
    }
}
