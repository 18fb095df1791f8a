//! What the scenarios report: one line per capability,
//! `RESULT <capability> pass|fail|unsupported <detail>` (the detail on one
//! line, whatever it holds), and whether any failed, for the exit status.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Unsupported,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Unsupported => "unsupported",
        }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub failed: bool,
}

impl Report {
    pub fn result(&mut self, capability: &str, outcome: Outcome, detail: &str) {
        self.failed |= outcome == Outcome::Fail;
        // One line each, whatever the detail holds.
        let detail = detail.trim().replace('\n', " | ");
        println!("RESULT {capability} {} {detail}", outcome.as_str());
    }
}

pub fn judged(result: Result<(Outcome, String), String>) -> (Outcome, String) {
    result.unwrap_or_else(|e| (Outcome::Fail, e))
}
