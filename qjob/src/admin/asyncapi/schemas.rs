//! A payload's JSON Schema inside an AsyncAPI document: its definitions
//! move to `components/schemas`, where the document's references resolve,
//! shared by the job types whose definitions agree.

use serde_json::{Map, Value, json};

use super::server::percent_decoded;

/// Where an AsyncAPI document keeps reusable schemas.
const COMPONENTS: &str = "#/components/schemas/";

/// The keywords under which a schema keeps its definitions: draft-07's
/// and 2019-09's.
const DEFINITIONS: [&str; 2] = ["definitions", "$defs"];

/// One definition of a payload's schema.
struct Definition {
    /// Its JSON pointer in the schema, `#/definitions/<name>`, unencoded.
    pointer: String,
    /// Its name as a component.
    name: String,
    schema: Value,
}

/// Where a payload's schema goes: its definitions under their own names
/// (`prefix` `None`) or under `<prefix>.<name>`; the schema itself, if it
/// refers to its own root, under the prefix or else `owner`.
struct Placement<'a> {
    definitions: &'a [Definition],
    prefix: Option<String>,
    root: Option<String>,
}

impl Placement<'_> {
    fn target(&self, definition: &Definition) -> String {
        match &self.prefix {
            None => definition.name.clone(),
            Some(prefix) => format!("{prefix}.{}", definition.name),
        }
    }

    /// A reference as it reads in the document.
    fn reference(&self, reference: &str) -> Option<String> {
        let decoded = percent_decoded(reference);
        for definition in self.definitions {
            if let Some(rest) = decoded.strip_prefix(definition.pointer.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return Some(format!("{COMPONENTS}{}{rest}", self.target(definition)));
            }
        }
        let rest = decoded.strip_prefix('#')?;
        let root = self.root.as_ref()?;
        Some(format!("{COMPONENTS}{root}{rest}"))
    }

    fn rewritten(&self, schema: &Value) -> Value {
        match schema {
            Value::Object(object) => Value::Object(
                object
                    .iter()
                    .map(|(key, value)| {
                        let value = match (key.as_str(), value) {
                            ("$ref", Value::String(reference)) => self
                                .reference(reference)
                                .map_or_else(|| value.clone(), Value::String),
                            _ => self.rewritten(value),
                        };
                        (key.clone(), value)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.rewritten(v)).collect()),
            other => other.clone(),
        }
    }

    /// The components it adds: the definitions, then the root if it moves.
    fn components(&self, root: &Value) -> Vec<(String, Value)> {
        let mut placed: Vec<(String, Value)> = self
            .definitions
            .iter()
            .map(|definition| (self.target(definition), self.rewritten(&definition.schema)))
            .collect();
        if let Some(name) = &self.root {
            placed.push((name.clone(), self.rewritten(root)));
        }
        placed
    }
}

/// `schema` ready to be a message's payload in a document whose
/// `components/schemas` is `components`: its `$schema` dropped, its
/// definitions moved there with its references rewritten to match. They
/// keep their names, or, when a job type's schema put a different
/// definition under one of them, all take `owner` as a prefix
/// (`<owner>.<name>`). A schema that refers to its own root (a recursive
/// payload) moves there whole, as `owner`, and the payload refers to it.
pub(super) fn hoisted(schema: &Value, owner: &str, components: &mut Map<String, Value>) -> Value {
    let Value::Object(object) = schema else {
        return schema.clone();
    };
    let mut object = object.clone();
    object.remove("$schema");
    let mut definitions = Vec::new();
    for keyword in DEFINITIONS {
        if let Some(Value::Object(found)) = object.remove(keyword) {
            definitions.extend(found.into_iter().map(|(name, schema)| Definition {
                pointer: format!("#/{keyword}/{}", name.replace('~', "~0").replace('/', "~1")),
                name: super::component_name(&name),
                schema,
            }));
        }
    }
    let root = Value::Object(object);
    let recursive = refers_to_root(&root, &definitions)
        || definitions
            .iter()
            .any(|definition| refers_to_root(&definition.schema, &definitions));
    let prefixes = std::iter::once(None).chain(
        std::iter::once(owner.to_owned())
            .chain((2..).map(|n| format!("{owner}_{n}")))
            .map(Some),
    );
    for prefix in prefixes {
        let root_name = recursive.then(|| prefix.clone().unwrap_or_else(|| owner.to_owned()));
        let placement = Placement {
            definitions: &definitions,
            prefix,
            root: root_name.clone(),
        };
        let placed = placement.components(&root);
        let fits = placed.iter().all(|(name, schema)| {
            components
                .get(name)
                .is_none_or(|existing| existing == schema)
        });
        if !fits {
            continue;
        }
        components.extend(placed);
        return match root_name {
            Some(name) => json!({ "$ref": format!("{COMPONENTS}{name}") }),
            None => placement.rewritten(&root),
        };
    }
    unreachable!("a fresh prefix always fits")
}

/// Whether `schema` has a local reference that points at none of the
/// definitions: at the root of the schema they came from.
fn refers_to_root(schema: &Value, definitions: &[Definition]) -> bool {
    match schema {
        Value::Object(object) => object
            .iter()
            .any(|(key, value)| match (key.as_str(), value) {
                ("$ref", Value::String(reference)) => {
                    let decoded = percent_decoded(reference);
                    decoded.starts_with('#')
                        && !definitions.iter().any(|definition| {
                            decoded
                                .strip_prefix(definition.pointer.as_str())
                                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                        })
                }
                _ => refers_to_root(value, definitions),
            }),
        Value::Array(items) => items.iter().any(|item| refers_to_root(item, definitions)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoice() -> Value {
        json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "title": "Invoice",
            "type": "object",
            "properties": {
                "lines": { "type": "array", "items": { "$ref": "#/definitions/Line" } },
                "total": { "$ref": "#/definitions/Money" }
            },
            "definitions": {
                "Line": { "type": "object", "properties": { "price": { "$ref": "#/definitions/Money" } } },
                "Money": { "type": "integer" }
            }
        })
    }

    #[test]
    fn definitions_move_to_the_components_and_references_follow() {
        let mut components = Map::new();
        let payload = hoisted(&invoice(), "invoice", &mut components);
        assert_eq!(payload.get("$schema"), None);
        assert_eq!(payload.get("definitions"), None);
        assert_eq!(payload["title"], "Invoice");
        assert_eq!(
            payload["properties"]["lines"]["items"]["$ref"],
            "#/components/schemas/Line"
        );
        assert_eq!(
            components["Line"]["properties"]["price"]["$ref"],
            "#/components/schemas/Money"
        );
        assert_eq!(components["Money"], json!({ "type": "integer" }));
    }

    #[test]
    fn equal_definitions_are_shared_and_different_ones_prefixed() {
        let mut components = Map::new();
        hoisted(&invoice(), "invoice", &mut components);
        let refund = hoisted(&invoice(), "refund", &mut components);
        assert_eq!(components.len(), 2, "shared: {components:?}");
        assert_eq!(
            refund["properties"]["total"]["$ref"],
            "#/components/schemas/Money"
        );

        let mut other = invoice();
        other["definitions"]["Money"] = json!({ "type": "string" });
        let quote = hoisted(&other, "quote", &mut components);
        assert_eq!(
            quote["properties"]["total"]["$ref"],
            "#/components/schemas/quote.Money"
        );
        assert_eq!(
            components["quote.Line"]["properties"]["price"]["$ref"],
            "#/components/schemas/quote.Money"
        );
        assert_eq!(components["Money"], json!({ "type": "integer" }), "kept");
    }

    #[test]
    fn a_recursive_payload_moves_whole() {
        let tree = json!({
            "title": "Tree",
            "type": "object",
            "properties": { "children": { "type": "array", "items": { "$ref": "#" } } }
        });
        let mut components = Map::new();
        let payload = hoisted(&tree, "tree", &mut components);
        assert_eq!(payload, json!({ "$ref": "#/components/schemas/tree" }));
        assert_eq!(
            components["tree"]["properties"]["children"]["items"]["$ref"],
            "#/components/schemas/tree"
        );
    }

    #[test]
    fn encoded_and_2019_definitions_resolve() {
        let schema = json!({
            "properties": { "a": { "$ref": "#/$defs/Wrapper%3CT%3E" } },
            "$defs": { "Wrapper<T>": { "type": "string" } }
        });
        let mut components = Map::new();
        let payload = hoisted(&schema, "wrapped", &mut components);
        assert_eq!(
            payload["properties"]["a"]["$ref"],
            "#/components/schemas/Wrapper_T_"
        );
        assert_eq!(components["Wrapper_T_"], json!({ "type": "string" }));
    }

    #[test]
    fn a_boolean_schema_stays() {
        assert_eq!(hoisted(&json!(true), "any", &mut Map::new()), json!(true));
    }
}
