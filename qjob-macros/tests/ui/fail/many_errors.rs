use qjob::{job, Job, JobContext, JobError};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Charge {
    pub account: String,
}

// Every wrong argument is reported at once, and `ChargeJob` still exists:
// its uses below add no error.
#[job(queue = "q", prefetch = 0, timeout = "soon", colour = "blue")]
pub async fn charge(_job: Charge, _ctx: JobContext) -> Result<(), JobError> {
    Ok(())
}

fn main() {
    let _ = ChargeJob::options();
}

#[allow(dead_code)]
fn register(broker: std::sync::Arc<dyn qjob::Broker>) {
    let _ = qjob::Worker::builder(broker).register(ChargeJob);
}
