//! `SpendService`: spend by key, team, user, organization, model, tag and day range. Scoped
//! callers see only their own slice: an org admin its organization, anyone else its own user.

use sluice_core::cost::nanos_to_usd;
use sluice_proto::admin::v1 as pb;
use tonic::{Request, Response, Status};

use super::Admin;
use super::auth::{Principal, Scope};
use super::error::{AdminError, AdminResult};
use super::validate::page_size;
use crate::store::{GroupBy, SpendFilter, SpendLog, Store, TeamRecord, UserRecord};

/// A `YYYY-MM-DD` day (validated: it is compared as text).
fn day(field: &str, s: &str) -> AdminResult<Option<String>> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() != 10 || sluice_core::time::parse_rfc3339(s).is_none() {
        return Err(AdminError::InvalidArgument(format!("{field} must be a day like 2026-11-22, got {s:?}")));
    }
    Ok(Some(s.to_owned()))
}

fn group_by(g: i32) -> AdminResult<GroupBy> {
    Ok(match pb::SpendGroupBy::try_from(g) {
        Ok(pb::SpendGroupBy::Unspecified | pb::SpendGroupBy::Day) => GroupBy::Day,
        Ok(pb::SpendGroupBy::Key) => GroupBy::Key,
        Ok(pb::SpendGroupBy::Team) => GroupBy::Team,
        Ok(pb::SpendGroupBy::User) => GroupBy::User,
        Ok(pb::SpendGroupBy::Organization) => GroupBy::Organization,
        Ok(pb::SpendGroupBy::Model) => GroupBy::Model,
        Ok(pb::SpendGroupBy::Tag) => GroupBy::Tag,
        Ok(pb::SpendGroupBy::Customer) => GroupBy::Customer,
        Err(_) => return Err(AdminError::InvalidArgument(format!("group_by {g} is not a grouping"))),
    })
}

fn nonneg_usd(nanos: i64) -> f64 {
    nanos_to_usd(u64::try_from(nanos).unwrap_or(0))
}

impl<S: Store> Admin<S> {
    /// The query's filter, narrowed to the caller's slice whatever it asked for (an org admin
    /// its organization, a team admin its team, anyone else its own user); naming something
    /// outside it answers as if it did not exist.
    async fn scoped_filter(&self, caller: &Principal, q: &pb::SpendQuery) -> AdminResult<SpendFilter> {
        let mut filter = SpendFilter {
            key_id: q.key_id.clone(),
            team_id: q.team_id.clone(),
            user_id: q.user_id.clone(),
            organization_id: q.organization_id.clone(),
            model_group: q.model_group.clone(),
            tag: q.tag.clone(),
            start_day: day("start_day", &q.start_day)?,
            end_day: day("end_day", &q.end_day)?,
        };
        // A scoped caller's filter is narrowed to its slice, whatever it asked for.
        match caller.list_scope() {
            Scope::All => {}
            Scope::Org(org) => {
                if filter.organization_id.as_ref().is_some_and(|o| *o != org) {
                    return Err(AdminError::NotFound("no such organization".into()));
                }
                // Naming another organization's user, team or key answers as if it did not exist.
                if let Some(user) = &filter.user_id {
                    let u: Option<UserRecord> = self.store.get(user).await.ok();
                    if u.and_then(|u| u.organization_id).as_ref() != Some(&org) {
                        return Err(AdminError::NotFound("no such user".into()));
                    }
                }
                if let Some(team) = &filter.team_id {
                    let t: Option<TeamRecord> = self.store.get(team).await.ok();
                    if t.and_then(|t| t.organization_id).as_ref() != Some(&org) {
                        return Err(AdminError::NotFound("no such team".into()));
                    }
                }
                filter.organization_id = Some(org);
            }
            // A team's admin sees the team's spend; anyone else its own.
            Scope::Own(_) if filter.team_id.as_ref().is_some_and(|t| caller.administers(t)) => {}
            Scope::Own(user) => {
                if filter.user_id.as_ref().is_some_and(|u| *u != user) {
                    return Err(AdminError::NotFound("no such user".into()));
                }
                filter.user_id = Some(user);
            }
        }
        Ok(filter)
    }
}

#[tonic::async_trait]
impl<S: Store> pb::spend_service_server::SpendService for Admin<S> {
    async fn query_spend(&self, request: Request<pb::SpendQuery>) -> Result<Response<pb::SpendReport>, Status> {
        let caller = self.caller(&request).await?;
        let q = request.into_inner();
        let filter = self.scoped_filter(&caller, &q).await?;
        let by = group_by(q.group_by)?;
        let rows = self.store.query_spend(&filter, by).await.map_err(AdminError::from)?;
        // A request with several tags is in several tag groups: total it by day instead.
        let totals = if by == GroupBy::Tag {
            self.store.query_spend(&filter, GroupBy::Day).await.map_err(AdminError::from)?
        } else {
            rows.clone()
        };
        let requests: i64 = totals.iter().map(|r| r.requests).sum();
        let total_nanos: i64 = totals.iter().map(|r| r.cost_nanos).sum();
        Ok(Response::new(pb::SpendReport {
            rows: rows
                .into_iter()
                .map(|r| pb::SpendRow {
                    group: r.group,
                    requests: u64::try_from(r.requests).unwrap_or(0),
                    prompt_tokens: u64::try_from(r.prompt_tokens).unwrap_or(0),
                    completion_tokens: u64::try_from(r.completion_tokens).unwrap_or(0),
                    spend: nonneg_usd(r.cost_nanos),
                })
                .collect(),
            requests: u64::try_from(requests).unwrap_or(0),
            spend: nonneg_usd(total_nanos),
        }))
    }

    async fn list_spend_logs(
        &self,
        request: Request<pb::SpendLogsQuery>,
    ) -> Result<Response<pb::SpendLogsPage>, Status> {
        let caller = self.caller(&request).await?;
        let q = request.into_inner();
        let filter = self.scoped_filter(&caller, &q.filter.unwrap_or_default()).await?;
        let limit = page_size(q.page_size);
        // The token is the offset of the next page (rows are ordered newest first).
        let offset: i64 = match q.page_token.as_str() {
            "" => 0,
            token => token.parse().map_err(|_| AdminError::InvalidArgument("page_token is not this list's".into()))?,
        };
        let (logs, total) = self
            .store
            .spend_logs(&filter, q.request_id.as_deref(), i64::from(limit), offset)
            .await
            .map_err(AdminError::from)?;
        let next = offset.saturating_add(i64::try_from(logs.len()).unwrap_or(0));
        let next_page_token =
            if logs.len() == limit as usize && next < total { next.to_string() } else { String::new() };
        Ok(Response::new(pb::SpendLogsPage {
            logs: logs.iter().map(log_entry).collect(),
            next_page_token,
            total: u64::try_from(total).unwrap_or(0),
        }))
    }
}

/// One stored row as the API shows it.
fn log_entry(l: &SpendLog) -> pb::SpendLogEntry {
    let failed: Vec<serde_json::Value> = l
        .failed_attempts
        .iter()
        .map(|(deployment, error)| serde_json::json!({"deployment": deployment, "error": error}))
        .collect();
    pb::SpendLogEntry {
        record_id: l.record_id.clone(),
        request_id: l.request_id.clone(),
        key_id: l.key_id.clone(),
        team_id: l.team_id.clone(),
        user_id: l.user_id.clone(),
        organization_id: l.organization_id.clone(),
        model_group: l.model_group.clone(),
        deployment_id: l.deployment_id.clone(),
        tags: l.tags.clone(),
        prompt_tokens: u64::try_from(l.prompt_tokens).unwrap_or(0),
        completion_tokens: u64::try_from(l.completion_tokens).unwrap_or(0),
        spend: nonneg_usd(l.cost_nanos),
        status: u32::try_from(l.status).unwrap_or(0),
        outcome: l.outcome.clone(),
        estimated: l.estimated,
        price_unknown: l.price_unknown,
        cache_hit: l.cache_hit,
        start_time: sluice_core::time::format_rfc3339_ms(l.start_ms),
        failed_attempts_json: serde_json::Value::Array(failed).to_string(),
        end_user: l.customer_id.clone(),
    }
}
