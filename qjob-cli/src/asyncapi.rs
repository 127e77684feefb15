//! `qjob asyncapi`: the AsyncAPI document of the job types the running
//! workers run, for producers in other languages.

use std::path::PathBuf;

use clap::Args;
use qjob::admin::{Admin, AsyncApi};
use serde_json::Value;

use crate::failure::{Failure, NOT_FOUND};

#[derive(Debug, Args)]
pub(crate) struct AsyncApiArgs {
    /// Write the document to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// The document's title (`info.title`).
    #[arg(long, default_value = "qjob jobs")]
    pub(crate) title: String,
    /// The version of the API it describes (`info.version`): yours, not
    /// qjob's.
    #[arg(long, default_value = "1.0.0", value_name = "VERSION")]
    pub(crate) api_version: String,
}

/// Prints or writes the document of the job types the alive workers run,
/// naming the broker at `url` without its credentials; not found (3)
/// when no worker was heard.
pub(crate) async fn asyncapi(admin: &Admin, url: &str, args: &AsyncApiArgs) -> Result<(), Failure> {
    admin.refresh().await?;
    let api = AsyncApi::new(&args.title, &args.api_version).with_server(url)?;
    let document = admin.asyncapi(&api);
    describes_a_job(&document)?;
    let text = serde_json::to_string_pretty(&document).expect("JSON values serialize");
    match &args.output {
        None => say!("{text}"),
        Some(path) => std::fs::write(path, text + "\n")
            .map_err(|error| Failure(1, format!("cannot write {}: {error}", path.display())))?,
    }
    Ok(())
}

/// Not found, unless `document` has a channel: a document of no job type
/// tells a producer nothing.
fn describes_a_job(document: &Value) -> Result<(), Failure> {
    let channels = document["channels"].as_object();
    if channels.is_some_and(|channels| !channels.is_empty()) {
        return Ok(());
    }
    Err(Failure(
        NOT_FOUND,
        "no running worker was heard (give them longer with --wait): there is no job type to describe"
            .to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_of_no_job_type_is_not_found() {
        let empty = AsyncApi::new("t", "1").document(&[]);
        let Err(Failure(code, message)) = describes_a_job(&empty) else {
            panic!("an empty document passed");
        };
        assert_eq!(code, NOT_FOUND);
        assert!(message.contains("no running worker was heard"), "{message}");
        let one = serde_json::json!({ "channels": { "charge": {} } });
        assert!(describes_a_job(&one).is_ok());
    }
}
