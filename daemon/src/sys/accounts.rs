//! Listing the system's user and group database (`getpwent`,
//! `getgrent`), for "did you mean" after an unknown name in the policy.
//!
//! The enumeration functions keep one global cursor per database, so two
//! walks at once would corrupt each other: every walk of the daemon goes
//! through this module and holds its lock, and nothing else in the daemon
//! calls `setpwent`/`getpwent`/`endpwent` (or the group ones). Lookups by
//! name (`getpwnam_r`) have no such cursor and need no lock.

use std::sync::Mutex;

static WALKING: Mutex<()> = Mutex::new(());

/// Every user name the system database lists (NSS sources that do not
/// enumerate, such as some directory services, list nothing).
pub fn user_names() -> Vec<String> {
    let _walk = WALKING.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: the lock above serializes every passwd walk of the process
    // (module doc), and the iterator is used up before it is released.
    let users = unsafe { uzers::all_users() };
    users.filter_map(|u| u.name().to_str().map(str::to_owned)).collect()
}

/// Every group name the system database lists.
pub fn group_names() -> Vec<String> {
    let _walk = WALKING.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: as in `user_names`, for the group database.
    let groups = unsafe { uzers::all_groups() };
    groups.filter_map(|g| g.name().to_str().map(str::to_owned)).collect()
}
