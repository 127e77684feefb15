//! The `#[job]` attribute of qjob. Use it through `qjob::job`; its
//! arguments are documented there.

mod args;
mod check;
#[cfg(feature = "cron")]
mod cron;
mod expand;
mod values;

use proc_macro::TokenStream;

#[doc = include_str!("../ARGUMENTS.md")]
#[proc_macro_attribute]
pub fn job(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::job(args.into(), item.into()).into()
}
