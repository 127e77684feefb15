use qjob::{job, JobContext, JobError};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Invoice {
    pub account: String,
}

// qjob's feature `schemars` is off in these tests.
#[job(queue = "billing.invoice", schema)]
pub async fn invoice(_job: Invoice, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
