//! What a learning lease recorded, as a policy rule ready to paste
//! (`bpftoken learn`).

use crate::delegation::{self, Delegation, Kind};

/// Who a learned rule names: a user by name, or a uid without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleUser {
    Name(String),
    Uid(u32),
}

/// The minimal `[[allow]]` rule for `user` that grants exactly `used`
/// (what a learning lease recorded): one line per non-empty set, kernel
/// names in enum order; TOML, ready for the daemon's policy.
///
/// ```
/// use bpftoken::{learned_rule, Delegation, RuleUser};
///
/// let used = Delegation { cmds: 1, maps: 1 << 2, ..Delegation::NONE };
/// assert_eq!(
///     learned_rule(&RuleUser::Name("alice".into()), &used),
///     "[[allow]]\nusers = [\"alice\"]\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n"
/// );
/// ```
pub fn learned_rule(user: &RuleUser, used: &Delegation) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = String::from("[[allow]]\n");
    match user {
        RuleUser::Name(name) => out.push_str(&format!("users = [{}]\n", quote(name))),
        RuleUser::Uid(uid) => out.push_str(&format!("uids = [{uid}]\n")),
    }
    for kind in Kind::ALL {
        let names = delegation::names(kind, used.get(kind));
        if !names.is_empty() {
            let list: Vec<String> = names.iter().map(|n| quote(n)).collect();
            out.push_str(&format!("{} = [{}]\n", kind.key(), list.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_rule_names_each_used_set_in_enum_order() {
        let used = Delegation { cmds: (1 << 18) | (1 << 5) | 1, maps: 1 << 2, progs: 1 << 1, attachs: 1 };
        assert_eq!(
            learned_rule(&RuleUser::Name("bpftk-alice".into()), &used),
            "[[allow]]\nusers = [\"bpftk-alice\"]\ncmds = [\"map_create\", \"prog_load\", \"btf_load\"]\n\
             maps = [\"array\"]\nprogs = [\"socket_filter\"]\nattachs = [\"cgroup_inet_ingress\"]\n"
        );
        let only_cmds = Delegation { cmds: 1 << 18, ..Delegation::NONE };
        assert_eq!(learned_rule(&RuleUser::Uid(1234), &only_cmds), "[[allow]]\nuids = [1234]\ncmds = [\"btf_load\"]\n");
        assert_eq!(
            learned_rule(&RuleUser::Name("a\"b".into()), &Delegation::NONE),
            "[[allow]]\nusers = [\"a\\\"b\"]\n"
        );
    }
}
