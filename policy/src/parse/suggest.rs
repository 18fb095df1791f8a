//! "Did you mean": the nearest known key, user, group or kernel name for
//! one that is not known. Suggestions only decorate an error; they never
//! change what loads.

use bpftoken_proto::delegation::Kind;

use crate::btf::KernelNames;

/// The nearest of `known` to `name`, if it is close enough to be a typo.
pub(crate) fn closest<'a>(known: impl IntoIterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    known
        .into_iter()
        .map(|n| (edit_distance(n, name), n))
        .filter(|&(d, n)| d <= 2.max(n.len() / 3))
        .min_by_key(|&(d, _)| d)
        .map(|(_, n)| n)
}

/// What to say after `unknown {kind} "{name}"`, if anything: the policy's
/// spelling of a kernel C name (`BPF_PROG_TYPE_XDP` is `xdp`), the list a
/// name of another set belongs in (`progs = ["hash"]`), or a near miss.
pub(crate) fn kernel_name_hint(names: &KernelNames, kind: Kind, name: &str) -> Option<String> {
    if let Some(spelled) = policy_spelling(names, kind, name) {
        return Some(format!(
            " (did you mean \"{spelled}\"? the policy spells kernel names in lowercase without `{}`)",
            kind.kernel_prefix()
        ));
    }
    let elsewhere: Vec<(Kind, String)> = Kind::ALL
        .into_iter()
        .filter(|&other| other != kind)
        .filter_map(|other| {
            let spelled = if names.value_of(other, name).is_some() {
                name.to_owned()
            } else {
                policy_spelling(names, other, name)?
            };
            Some((other, spelled))
        })
        .collect();
    if let Some((_, spelled)) = elsewhere.first() {
        let nouns: Vec<String> = elsewhere
            .iter()
            .map(|(k, _)| {
                let article = if k.noun().starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
                format!("{article} {}", k.noun())
            })
            .collect();
        let keys: Vec<String> = elsewhere.iter().map(|(k, _)| format!("`{}`", k.key())).collect();
        return Some(format!(" (\"{spelled}\" is {}: it belongs in {})", nouns.join(" and "), keys.join(" or ")));
    }
    closest(names.names(kind).iter().map(|(n, _)| n.as_str()), name).map(|s| format!(" (did you mean \"{s}\"?)"))
}

/// `name` written as the kernel's C enum spells it (`BPF_MAP_TYPE_HASH`,
/// `BPF_MAP_CREATE`, any case, with or without the prefix), as the policy
/// spells it, if that is a name of `kind`.
fn policy_spelling(names: &KernelNames, kind: Kind, name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let prefix = kind.kernel_prefix().to_ascii_lowercase();
    let bare = lower.strip_prefix(&prefix).unwrap_or(&lower);
    (bare != name && names.value_of(kind, bare).is_some()).then(|| bare.to_owned())
}

/// Edits (insert, delete, substitute, swap two neighbours) from `a` to
/// `b`: a swapped pair is the commonest typo, so it counts as one.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Rows i-2, i-1 and i of the optimal-string-alignment table.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j - 1] + cost).min(prev[j] + 1).min(cur[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(kind: Kind, name: &str) -> String {
        kernel_name_hint(&KernelNames::builtin(), kind, name).unwrap_or_default()
    }

    #[test]
    fn kernel_spellings_become_policy_names() {
        let no_prefix = "the policy spells kernel names in lowercase without";
        assert_eq!(
            hint(Kind::Prog, "BPF_PROG_TYPE_XDP"),
            format!(" (did you mean \"xdp\"? {no_prefix} `BPF_PROG_TYPE_`)")
        );
        assert_eq!(
            hint(Kind::Map, "BPF_MAP_TYPE_HASH"),
            format!(" (did you mean \"hash\"? {no_prefix} `BPF_MAP_TYPE_`)")
        );
        assert_eq!(hint(Kind::Cmd, "BPF_MAP_CREATE"), format!(" (did you mean \"map_create\"? {no_prefix} `BPF_`)"));
        assert_eq!(hint(Kind::Cmd, "BPF_PROG_LOAD"), format!(" (did you mean \"prog_load\"? {no_prefix} `BPF_`)"));
        assert_eq!(
            hint(Kind::Attach, "BPF_CGROUP_INET_INGRESS"),
            format!(" (did you mean \"cgroup_inet_ingress\"? {no_prefix} `BPF_`)")
        );
        assert_eq!(hint(Kind::Map, "RINGBUF"), format!(" (did you mean \"ringbuf\"? {no_prefix} `BPF_MAP_TYPE_`)"));
    }

    #[test]
    fn a_name_of_another_set_says_where_it_belongs() {
        assert_eq!(hint(Kind::Prog, "hash"), " (\"hash\" is a map type: it belongs in `maps`)");
        assert_eq!(hint(Kind::Prog, "BPF_MAP_TYPE_ARRAY"), " (\"array\" is a map type: it belongs in `maps`)");
        assert_eq!(
            hint(Kind::Map, "xdp"),
            " (\"xdp\" is a program type and an attach type: it belongs in `progs` or `attachs`)"
        );
        assert_eq!(hint(Kind::Map, "ringbuff"), " (did you mean \"ringbuf\"?)");
        assert_eq!(hint(Kind::Prog, "wibble"), "");
    }

    #[test]
    fn closest_needs_a_near_miss() {
        assert_eq!(closest(["users", "groups", "uids"], "user"), Some("users"));
        assert_eq!(closest(["users", "groups", "uids"], "grups"), Some("groups"));
        assert_eq!(closest(["users", "groups", "uids"], "executables"), None);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }
}
