//! `GET /v1/models` and `GET /v1/models/{id}`: the models a client's group may ask for, shaped
//! like OpenAI's model list so SDK calls such as `client.models.list()` work through the gateway.
//!
//! The list comes from the config: every account of the group contributes its `models` and the
//! client-side names of its `model_map`. It is not fetched from upstream.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::config::Account;

/// One entry of the list, as OpenAI shapes it.
#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

impl<'a> Model<'a> {
    fn new(id: &'a str) -> Self {
        Model {
            id,
            object: "model",
            created: 0,
            owned_by: "shardgate",
        }
    }
}

/// The list object.
#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<Model<'a>>,
}

/// The model names the accounts at `indices` serve, sorted and each once.
fn names<'a>(accounts: &'a [Account], indices: &[usize]) -> BTreeSet<&'a str> {
    indices
        .iter()
        .filter_map(|&i| accounts.get(i))
        .flat_map(|a| {
            a.models
                .iter()
                .map(String::as_str)
                .chain(a.model_map.keys().map(String::as_str))
        })
        .collect()
}

/// The body of `GET /v1/models` for a group whose accounts are `indices`.
pub fn list_body(accounts: &[Account], indices: &[usize]) -> String {
    let list = ModelList {
        object: "list",
        data: names(accounts, indices)
            .into_iter()
            .map(Model::new)
            .collect(),
    };
    sonic_rs::to_string(&list).unwrap_or_else(|_| r#"{"object":"list","data":[]}"#.into())
}

/// The body of `GET /v1/models/{id}`, when the group serves `id`.
pub fn model_body(accounts: &[Account], indices: &[usize], id: &str) -> Option<String> {
    let name = names(accounts, indices).into_iter().find(|n| *n == id)?;
    sonic_rs::to_string(&Model::new(name)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use sonic_rs::{JsonContainerTrait, JsonValueTrait};

    fn config() -> Config {
        let text = r#"
            [usage]
            path = "/var/lib/shardgate/usage.jsonl"
            [[client_keys]]
            key = "k"
            [[accounts]]
            id = "a"
            base_url = "http://127.0.0.1:1/v1"
            api_key = "sk-a"
            models = ["gpt-5", "o3"]
            [[accounts]]
            id = "b"
            base_url = "http://127.0.0.1:2/v1"
            api_key = "sk-b"
            model_map = { "gpt-5" = "gpt-5-2026-01-01", "codex" = "gpt-5-codex" }
            [[accounts]]
            id = "c"
            group = "other"
            base_url = "http://127.0.0.1:3/v1"
            api_key = "sk-c"
            models = ["secret-model"]
        "#;
        Config::parse(text, &|_| None).unwrap()
    }

    #[test]
    fn a_group_lists_its_accounts_models_once_each() {
        let c = config();
        let body = list_body(&c.accounts, &[0, 1]);
        let v: sonic_rs::Value = sonic_rs::from_str(&body).unwrap();
        assert_eq!(v["object"].as_str(), Some("list"));
        let data = v["data"].as_array().unwrap();
        let ids: Vec<&str> = data.iter().filter_map(|m| m["id"].as_str()).collect();
        assert_eq!(ids, ["codex", "gpt-5", "o3"]);
        assert_eq!(data[0]["object"].as_str(), Some("model"));
        assert!(data[0]["created"].is_u64() && data[0]["owned_by"].is_str());
        assert!(!body.contains("secret-model") && !body.contains("gpt-5-2026"));
    }

    #[test]
    fn one_model_is_found_only_in_its_group() {
        let c = config();
        let one = model_body(&c.accounts, &[0, 1], "o3").unwrap();
        assert!(one.contains(r#""id":"o3""#), "{one}");
        assert!(model_body(&c.accounts, &[0, 1], "secret-model").is_none());
    }
}
