//! LiteLLM's daily spend report, `/global/spend/report`: spend by day and team (the default),
//! customer, or team and customer, or in total by key (`group_by=api_key`, or a key or an
//! internal user named), each with its models, as LiteLLM's `get_global_spend_report` answers.
//! The spend service groups by one thing at a time, so the report reads the day's per-request
//! rows (scoped by the service as any spend read) and adds them up here, in nano-dollars.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::cost::{nanos_to_usd, usd_to_nanos};
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::spend_service_server::SpendService;
use sluice_proto::admin::v1::team_service_server::TeamService;

use super::spend::{MAX_REPORT_ROWS, bad_param, every_log, key_id_of, too_many_rows};
use super::{RestError, RestResult, grpc_request, json_response, parse_query};
use crate::admin::Admin;
use crate::store::Store;

type AdminState<S> = State<Arc<Admin<S>>>;

pub fn routes<S: Store>() -> Router<Arc<Admin<S>>> {
    Router::new().route("/global/spend/report", get(report::<S>))
}

#[derive(Deserialize)]
struct ReportQuery {
    start_date: Option<String>,
    end_date: Option<String>,
    group_by: Option<String>,
    api_key: Option<String>,
    internal_user_id: Option<String>,
    team_id: Option<String>,
    customer_id: Option<String>,
}

/// A report date: `YYYY-MM-DD`, required (LiteLLM: "Please provide start_date and end_date").
fn report_date(name: &str, value: Option<&str>) -> Result<String, RestError> {
    let value = value.map(str::trim).filter(|v| !v.is_empty()).ok_or_else(|| {
        bad_param(name, format!("{name} is required (YYYY-MM-DD): please provide start_date and end_date"))
    })?;
    if value.len() != 10 || sluice_core::time::parse_rfc3339(value).is_none() {
        return Err(bad_param(name, format!("{name} must be a day like 2024-05-10 (YYYY-MM-DD), got {value:?}")));
    }
    Ok(value.to_owned())
}

/// What a report is broken down by: LiteLLM's `group_by` (or, with `team_id` and `customer_id`
/// both, team and customer together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breakdown {
    Team,
    Customer,
    TeamCustomer,
    /// Not by day: per key, with its models.
    ApiKey,
}

impl Breakdown {
    fn from_name(name: Option<&str>) -> Result<Self, RestError> {
        match name.map(str::trim) {
            None | Some("" | "team") => Ok(Breakdown::Team),
            Some("customer") => Ok(Breakdown::Customer),
            Some("api_key") => Ok(Breakdown::ApiKey),
            Some(other) => Err(RestError::invalid(
                "group_by",
                format!("group_by must be team, customer or api_key, got {other:?}"),
            )),
        }
    }

    /// The field of each day's breakdown.
    fn field(self) -> &'static str {
        match self {
            Breakdown::Team => "teams",
            Breakdown::Customer => "customers",
            Breakdown::TeamCustomer => "teams_customers",
            Breakdown::ApiKey => "api_keys",
        }
    }
}

/// Spend and tokens of some requests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    nanos: u64,
    prompt: u64,
    completion: u64,
}

impl Usage {
    fn add(&mut self, l: &pb::SpendLogEntry) {
        self.nanos = self.nanos.saturating_add(usd_to_nanos(l.spend));
        self.prompt = self.prompt.saturating_add(l.prompt_tokens);
        self.completion = self.completion.saturating_add(l.completion_tokens);
    }

    fn plus(mut self, other: &Usage) -> Usage {
        self.nanos = self.nanos.saturating_add(other.nanos);
        self.prompt = self.prompt.saturating_add(other.prompt);
        self.completion = self.completion.saturating_add(other.completion);
        self
    }
}

/// `(team, customer)`: what a day's spend is broken down by (the one not asked for is None).
type Group = (Option<String>, Option<String>);

/// Usage by `(model, key)`.
type ByModelKey = BTreeMap<(String, Option<String>), Usage>;

/// A report's totals as its rows are read: by day, group and `(model, key)`, or (by key) by
/// key and model.
#[derive(Debug)]
struct Tally {
    breakdown: Breakdown,
    days: BTreeMap<String, BTreeMap<Group, ByModelKey>>,
    keys: BTreeMap<Option<String>, BTreeMap<String, Usage>>,
}

impl Tally {
    fn new(breakdown: Breakdown) -> Self {
        Tally { breakdown, days: BTreeMap::new(), keys: BTreeMap::new() }
    }

    fn add(&mut self, l: &pb::SpendLogEntry) {
        let group = match self.breakdown {
            Breakdown::ApiKey => {
                self.keys.entry(l.key_id.clone()).or_default().entry(l.model_group.clone()).or_default().add(l);
                return;
            }
            Breakdown::Team => (l.team_id.clone(), None),
            Breakdown::Customer => (None, l.end_user.clone()),
            Breakdown::TeamCustomer => (l.team_id.clone(), l.end_user.clone()),
        };
        // The row's UTC day (its start time is RFC 3339 in UTC).
        let day: String = l.start_time.chars().take(10).collect();
        let by_model = self.days.entry(day).or_default().entry(group).or_default();
        by_model.entry((l.model_group.clone(), l.key_id.clone())).or_default().add(l);
    }

    /// The teams the report names (for their aliases).
    fn team_ids(&self) -> BTreeSet<String> {
        self.days.values().flat_map(|groups| groups.keys().filter_map(|(team, _)| team.clone())).collect()
    }

    /// LiteLLM's answer. By day: `[{"group_by_day", "teams" | "customers" | "teams_customers":
    /// [{"team_name", "team_id" | "customer", "total_spend", "metadata": [{"model", "api_key",
    /// "spend", "total_tokens"}]}]}]`, days in order, most spent first within each. By key:
    /// `[{"api_key", "total_cost", "total_input_tokens", "total_output_tokens", "model_details":
    /// [{"model", "total_cost", "total_input_tokens", "total_output_tokens"}]}]`, most spent
    /// first. `team_names` are the teams' aliases.
    fn to_json(&self, team_names: &HashMap<String, String>) -> Value {
        if self.breakdown == Breakdown::ApiKey {
            let mut keys: Vec<(Usage, Value)> = self
                .keys
                .iter()
                .map(|(key, models)| {
                    let total = models.values().fold(Usage::default(), |t, u| t.plus(u));
                    let mut models: Vec<(&String, &Usage)> = models.iter().collect();
                    models.sort_by_key(|m| Reverse(m.1.nanos));
                    let details: Vec<Value> = models
                        .into_iter()
                        .map(|(model, u)| {
                            json!({"model": model, "total_cost": nanos_to_usd(u.nanos),
                                   "total_input_tokens": u.prompt, "total_output_tokens": u.completion})
                        })
                        .collect();
                    let row = json!({"api_key": key, "total_cost": nanos_to_usd(total.nanos),
                                     "total_input_tokens": total.prompt, "total_output_tokens": total.completion,
                                     "model_details": details});
                    (total, row)
                })
                .collect();
            keys.sort_by_key(|k| Reverse(k.0.nanos));
            return Value::Array(keys.into_iter().map(|(_, row)| row).collect());
        }
        let days = self.days.iter().map(|(day, groups)| {
            let mut entries: Vec<(Usage, Value)> = groups
                .iter()
                .map(|((team, customer), by_model)| {
                    let total = by_model.values().fold(Usage::default(), |t, u| t.plus(u));
                    let mut pairs: Vec<(&(String, Option<String>), &Usage)> = by_model.iter().collect();
                    pairs.sort_by_key(|p| Reverse(p.1.nanos));
                    let metadata: Vec<Value> = pairs
                        .into_iter()
                        .map(|((model, key), u)| {
                            json!({"model": model, "api_key": key, "spend": nanos_to_usd(u.nanos),
                                   "total_tokens": u.prompt.saturating_add(u.completion)})
                        })
                        .collect();
                    let mut entry = serde_json::Map::new();
                    if self.breakdown != Breakdown::Customer {
                        let name = match team {
                            Some(t) => team_names.get(t).cloned().unwrap_or_else(|| t.clone()),
                            None => "Unassigned Team".to_owned(),
                        };
                        entry.insert("team_name".into(), json!(name));
                        entry.insert("team_id".into(), json!(team));
                    }
                    if self.breakdown != Breakdown::Team {
                        entry.insert("customer".into(), json!(customer));
                    }
                    entry.insert("total_spend".into(), json!(nanos_to_usd(total.nanos)));
                    entry.insert("metadata".into(), Value::Array(metadata));
                    (total, Value::Object(entry))
                })
                .collect();
            entries.sort_by_key(|e| Reverse(e.0.nanos));
            let entries: Vec<Value> = entries.into_iter().map(|(_, e)| e).collect();
            json!({"group_by_day": day, self.breakdown.field(): entries})
        });
        Value::Array(days.collect())
    }
}

/// LiteLLM's `/global/spend/report`: spend from `start_date` to `end_date` (both included,
/// UTC days) by day and team (`group_by=team`, the default) or customer (`group_by=customer`),
/// each with its spend by model and key; or per key with its models (`group_by=api_key`, or
/// `api_key`, or `internal_user_id` given: that key's or that user's). `team_id` with
/// `customer_id` is by team and customer; either alone narrows the report.
async fn report<S: Store>(State(admin): AdminState<S>, headers: HeaderMap, RawQuery(query): RawQuery) -> RestResult {
    let q: ReportQuery = parse_query(query.as_deref())?;
    let start = report_date("start_date", q.start_date.as_deref())?;
    let end = report_date("end_date", q.end_date.as_deref())?;
    if end < start {
        return Err(bad_param("end_date", format!("end_date {end} is before start_date {start}")));
    }
    let mut breakdown = Breakdown::from_name(q.group_by.as_deref())?;
    let nonempty = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    let (api_key, user_id) = (nonempty(q.api_key), nonempty(q.internal_user_id));
    let (team_id, customer_id) = (nonempty(q.team_id), nonempty(q.customer_id));
    // LiteLLM's order: a key's report, a user's, a team's customer's, then by `group_by`.
    if api_key.is_some() || user_id.is_some() {
        breakdown = Breakdown::ApiKey;
    } else if team_id.is_some() && customer_id.is_some() {
        breakdown = Breakdown::TeamCustomer;
    }
    let filter = pb::SpendQuery {
        key_id: key_id_of(&admin, &headers, api_key).await?,
        user_id,
        team_id,
        start_day: start,
        end_day: end,
        ..pb::SpendQuery::default()
    };
    // The days with spend, and how many requests they had (refused before reading too many).
    let by_day = pb::SpendQuery { group_by: pb::SpendGroupBy::Day as i32, ..filter.clone() };
    let days = SpendService::query_spend(&*admin, grpc_request(&headers, by_day)?).await?.into_inner();
    if days.requests > MAX_REPORT_ROWS {
        return Err(too_many_rows(days.requests));
    }
    let mut tally = Tally::new(breakdown);
    // A day at a time: each day's rows are paged apart (the service pages by offset).
    for d in days.rows.iter().filter(|d| d.requests > 0) {
        let one_day = pb::SpendQuery { start_day: d.group.clone(), end_day: d.group.clone(), ..filter.clone() };
        every_log(&admin, &headers, &one_day, None, |l| {
            if customer_id.as_ref().is_none_or(|c| l.end_user.as_ref() == Some(c)) {
                tally.add(l);
            }
        })
        .await?;
    }
    // LiteLLM names teams by alias; a team the caller may not read is named by its id.
    let mut team_names = HashMap::new();
    for team_id in tally.team_ids() {
        let request = grpc_request(&headers, pb::TeamRef { team_id: team_id.clone() })?;
        if let Ok(team) = TeamService::get_team(&*admin, request).await
            && let Some(alias) = team.into_inner().team_alias
        {
            team_names.insert(team_id, alias);
        }
    }
    Ok(json_response(StatusCode::OK, &tally.to_json(&team_names)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rest::spend::tests::entry;

    #[test]
    fn report_dates_are_required_days() {
        assert_eq!(report_date("start_date", Some("2024-05-10")).unwrap(), "2024-05-10");
        assert_eq!(report_date("start_date", Some(" 2024-05-10 ")).unwrap(), "2024-05-10");
        for bad in
            [None, Some(""), Some("2024-5-10"), Some("2024-02-30"), Some("yesterday"), Some("2024-05-10T00:00:00Z")]
        {
            let e = report_date("end_date", bad).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some("end_date")), "{bad:?}");
            assert!(e.message.contains("end_date"), "{}", e.message);
        }
    }

    #[test]
    fn group_by_is_litellms() {
        assert_eq!(Breakdown::from_name(None).unwrap(), Breakdown::Team);
        assert_eq!(Breakdown::from_name(Some("team")).unwrap(), Breakdown::Team);
        assert_eq!(Breakdown::from_name(Some("customer")).unwrap(), Breakdown::Customer);
        assert_eq!(Breakdown::from_name(Some("api_key")).unwrap(), Breakdown::ApiKey);
        let e = Breakdown::from_name(Some("model")).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (StatusCode::UNPROCESSABLE_ENTITY, Some("group_by")));
    }

    #[test]
    fn by_team_each_day_splits_by_team_with_models_and_keys() {
        let mut tally = Tally::new(Breakdown::Team);
        for l in [
            entry("2024-05-10", Some("t1"), None, Some("k1"), "gpt-4o"),
            entry("2024-05-10", Some("t1"), None, Some("k1"), "gpt-4o"),
            entry("2024-05-10", Some("t2"), None, Some("k2"), "mini"),
            entry("2024-05-10", None, None, Some("k3"), "mini"),
            entry("2024-05-09", Some("t2"), None, Some("k2"), "mini"),
        ] {
            tally.add(&l);
        }
        assert_eq!(tally.team_ids(), BTreeSet::from(["t1".to_owned(), "t2".to_owned()]));
        let names = HashMap::from([("t1".to_owned(), "search".to_owned())]);
        let report = tally.to_json(&names);
        assert_eq!(
            report,
            json!([
                {"group_by_day": "2024-05-09", "teams": [
                    {"team_name": "t2", "team_id": "t2", "total_spend": 0.1,
                     "metadata": [{"model": "mini", "api_key": "k2", "spend": 0.1, "total_tokens": 15}]}]},
                {"group_by_day": "2024-05-10", "teams": [
                    {"team_name": "search", "team_id": "t1", "total_spend": 0.2,
                     "metadata": [{"model": "gpt-4o", "api_key": "k1", "spend": 0.2, "total_tokens": 30}]},
                    {"team_name": "Unassigned Team", "team_id": null, "total_spend": 0.1,
                     "metadata": [{"model": "mini", "api_key": "k3", "spend": 0.1, "total_tokens": 15}]},
                    {"team_name": "t2", "team_id": "t2", "total_spend": 0.1,
                     "metadata": [{"model": "mini", "api_key": "k2", "spend": 0.1, "total_tokens": 15}]}]},
            ])
        );
    }

    #[test]
    fn by_customer_and_by_team_and_customer() {
        let rows = [
            entry("2024-05-10", Some("t1"), Some("c1"), Some("k1"), "gpt-4o"),
            entry("2024-05-10", Some("t1"), None, Some("k1"), "gpt-4o"),
        ];
        let mut by_customer = Tally::new(Breakdown::Customer);
        let mut both = Tally::new(Breakdown::TeamCustomer);
        for l in &rows {
            by_customer.add(l);
            both.add(l);
        }
        let customers = by_customer.to_json(&HashMap::new());
        let day = &customers[0];
        assert_eq!(day["group_by_day"], "2024-05-10");
        let names: Vec<&Value> = day["customers"].as_array().unwrap().iter().map(|c| &c["customer"]).collect();
        assert_eq!(names, [&Value::Null, &json!("c1")]);
        assert!(day["customers"][0].get("team_name").is_none());
        let both = both.to_json(&HashMap::new());
        let entries = both[0]["teams_customers"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().all(|e| e["team_name"] == "t1" && e["total_spend"] == 0.1));
    }

    #[test]
    fn by_key_totals_each_key_with_its_models_most_spent_first() {
        let mut tally = Tally::new(Breakdown::ApiKey);
        let mut big = entry("2024-05-10", None, None, Some("k2"), "gpt-4o");
        big.spend = 1.0;
        for l in [
            entry("2024-05-10", None, None, Some("k1"), "gpt-4o"),
            entry("2024-05-11", None, None, Some("k1"), "mini"),
            entry("2024-05-11", None, None, Some("k1"), "mini"),
            big,
        ] {
            tally.add(&l);
        }
        assert_eq!(
            tally.to_json(&HashMap::new()),
            json!([
                {"api_key": "k2", "total_cost": 1.0, "total_input_tokens": 10, "total_output_tokens": 5,
                 "model_details": [{"model": "gpt-4o", "total_cost": 1.0, "total_input_tokens": 10,
                                    "total_output_tokens": 5}]},
                {"api_key": "k1", "total_cost": 0.3, "total_input_tokens": 30, "total_output_tokens": 15,
                 "model_details": [
                    {"model": "mini", "total_cost": 0.2, "total_input_tokens": 20, "total_output_tokens": 10},
                    {"model": "gpt-4o", "total_cost": 0.1, "total_input_tokens": 10, "total_output_tokens": 5}]},
            ])
        );
    }

    #[test]
    fn money_is_summed_exactly() {
        // 0.1 + 0.2 in floats is 0.30000000000000004; in nano-dollars it is 0.3.
        let mut u = Usage::default();
        for spend in [0.1, 0.2] {
            u.add(&pb::SpendLogEntry { spend, ..pb::SpendLogEntry::default() });
        }
        assert_eq!(nanos_to_usd(u.nanos), 0.3);
    }
}
