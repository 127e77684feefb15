use qjob::{job, JobContext, JobError};

#[job(queue = "billing.invoice", schema = true)]
pub async fn invoice(_job: String, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
