use qjob::{job, JobContext, JobError};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Charge {
    pub account: String,
}

#[job(queue = "q", circuit_breaker(failure_rate = 0.2, cooldown = "5m"))]
pub async fn charge(_job: Charge, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
