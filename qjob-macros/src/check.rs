//! Checking the handler's signature: `async fn name(payload: T, ctx: JobContext) -> Result<(), E>`.

use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, Type};

const SIGNATURE: &str =
    "a job handler is `async fn name(payload: Payload, ctx: JobContext) -> Result<(), E>`";

/// The payload type of a valid handler.
pub(crate) fn handler(function: &ItemFn) -> syn::Result<Type> {
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            format!("#[job] needs an `async fn`; {SIGNATURE}"),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "#[job] handlers cannot be generic: the payload type must be concrete",
        ));
    }
    let args: Vec<&FnArg> = sig.inputs.iter().collect();
    let (payload, ctx) = match args.as_slice() {
        [payload, ctx] => (*payload, *ctx),
        _ => {
            return Err(syn::Error::new(
                sig.inputs.span(),
                format!("expected two arguments, the payload and the context; {SIGNATURE}"),
            ));
        }
    };
    let payload = match payload {
        FnArg::Typed(arg) if !is_job_context(&arg.ty) => (*arg.ty).clone(),
        FnArg::Typed(arg) => {
            return Err(syn::Error::new(
                arg.ty.span(),
                format!("the first argument must be the payload, not the context; {SIGNATURE}"),
            ));
        }
        FnArg::Receiver(receiver) => {
            return Err(syn::Error::new(
                receiver.span(),
                format!("a job handler is a free function, not a method; {SIGNATURE}"),
            ));
        }
    };
    match ctx {
        FnArg::Typed(arg) if is_job_context(&arg.ty) => {}
        other => {
            let span = match other {
                FnArg::Typed(arg) => arg.ty.span(),
                FnArg::Receiver(receiver) => receiver.span(),
            };
            return Err(syn::Error::new(
                span,
                format!("the second argument must be `JobContext`; {SIGNATURE}"),
            ));
        }
    }
    if let Type::Reference(reference) = &payload {
        return Err(syn::Error::new(
            reference.span(),
            "the payload must be an owned type (it is deserialized for each attempt), not a reference",
        ));
    }
    match &sig.output {
        ReturnType::Default => {
            return Err(syn::Error::new(
                sig.paren_token.span.close(),
                format!("a job handler must return `Result<(), E>`; {SIGNATURE}"),
            ));
        }
        ReturnType::Type(_, output) => {
            if let Some(ok) = result_ok_type(output)
                && !is_unit(ok)
            {
                return Err(syn::Error::new(
                    ok.span(),
                    format!(
                        "a job handler returns `Result<(), E>`, not `Result<{}, _>`; {SIGNATURE}",
                        quote::ToTokens::to_token_stream(ok)
                    ),
                ));
            }
        }
    }
    Ok(payload)
}

/// `T` of a return type written `Result<T, E>` (any path ending in
/// `Result` with two arguments); an alias with one argument, or any other
/// type, is left to the compiler.
fn result_ok_type(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    let syn::PathArguments::AngleBracketed(arguments) = &last.arguments else {
        return None;
    };
    if last.ident != "Result" || arguments.args.len() != 2 {
        return None;
    }
    match arguments.args.first()? {
        syn::GenericArgument::Type(ok) => Some(ok),
        _ => None,
    }
}

fn is_unit(ty: &Type) -> bool {
    match ty {
        Type::Tuple(tuple) => tuple.elems.is_empty(),
        Type::Paren(paren) => is_unit(&paren.elem),
        _ => false,
    }
}

fn is_job_context(ty: &Type) -> bool {
    match ty {
        Type::Path(path) => {
            path.path.segments.last().is_some_and(|segment| {
                segment.ident == "JobContext" && segment.arguments.is_empty()
            })
        }
        _ => false,
    }
}
