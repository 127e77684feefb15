//! The `#[job]` attribute of qjob. Use it through `qjob::job`; its
//! arguments are documented there.

#![forbid(unsafe_code)]

mod args;
mod check;
mod expand;
mod values;

use proc_macro::TokenStream;

/// Turns an async handler into a job type. See the `qjob` crate's docs.
#[proc_macro_attribute]
pub fn job(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::job(args.into(), item.into()).into()
}
