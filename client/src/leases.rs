//! Listing leases: page by page (`LeasesPage`, docs/protocol.md), so a
//! listing of any length arrives whole, with the counts of unenforced
//! leases the daemon forgot to keep its table bounded; from a daemon older
//! than paged listings, in its one answer (`Leases`).
//!
//! Invariant: a walk stops unless every page moves the cursor forward, so
//! a daemon that misbehaves cannot keep the client looping.

use bpftoken_proto::message::RequestBody;
use bpftoken_proto::{ForgottenLeases, LeaseInfo, LeasesPageRequest, RefusalCode, Response, MAX_LEASES_PER_PAGE};

use crate::{Client, Error};

/// The caller's leases (uid 0: everyone's), oldest first, and how many
/// unenforced leases the daemon forgot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseListing {
    pub leases: Vec<LeaseInfo>,
    /// Per owner (the caller's own; uid 0: everyone's, `uid: None` for
    /// owners the daemon no longer counts one by one): their tokens still
    /// work, but they are no longer listed. Empty from a daemon older than
    /// paged listings.
    pub forgotten: Vec<ForgottenLeases>,
}

impl Client {
    /// The caller's leases (uid 0: everyone's), oldest first.
    pub fn leases(&mut self) -> Result<Vec<LeaseInfo>, Error> {
        self.lease_listing().map(|l| l.leases)
    }

    /// [`Client::leases`], and the counts of forgotten leases: every page
    /// of the listing, however many there are.
    pub fn lease_listing(&mut self) -> Result<LeaseListing, Error> {
        let mut listing = LeaseListing::default();
        let mut after = None;
        loop {
            let asked = LeasesPageRequest { after, limit: MAX_LEASES_PER_PAGE };
            self.send(RequestBody::LeasesPage(asked), None)?;
            let page = match self.read_plain()? {
                Response::LeasesPage(page) => page,
                // A daemon older than paged listings.
                Response::Refused(r)
                    if after.is_none() && r.code == RefusalCode::Malformed && r.message.starts_with("undecodable") =>
                {
                    return Ok(LeaseListing { leases: self.leases_in_one_answer()?, forgotten: Vec::new() });
                }
                Response::Refused(r) => return Err(Error::Refused(r)),
                _ => return Err(Error::Protocol("the daemon answered a lease listing with something else".into())),
            };
            if after.is_none() {
                listing.forgotten = page.forgotten;
            }
            let behind = |id: u64| after.is_some_and(|a| id <= a);
            if page.leases.iter().any(|l| behind(l.id)) || page.next.is_some_and(behind) {
                return Err(Error::Protocol(format!(
                    "the daemon's lease listing went backwards (a page after lease {})",
                    after.unwrap_or_default()
                )));
            }
            listing.leases.extend(page.leases);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(listing),
            }
        }
    }

    /// The old one-answer listing (`Leases`).
    fn leases_in_one_answer(&mut self) -> Result<Vec<LeaseInfo>, Error> {
        self.send(RequestBody::Leases, None)?;
        match self.read_plain()? {
            Response::Leases(l) => Ok(l),
            Response::Refused(r) => Err(Error::Refused(r)),
            _ => Err(Error::Protocol("the daemon answered a lease listing with something else".into())),
        }
    }
}
