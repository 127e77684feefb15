use qjob::{job, JobContext};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Charge {
    pub account: String,
}

#[job(queue = "q")]
pub async fn charge(_job: Charge, _ctx: JobContext) -> Result<(), String> {
    Err("declined".to_owned())
}

fn main() {}
