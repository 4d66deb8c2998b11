//! `SpendService`: spend by key, team, user, organization, model, tag and day range. Scoped
//! callers see only their own slice: an org admin its organization, anyone else its own user.

use sluice_core::cost::nanos_to_usd;
use sluice_proto::admin::v1 as pb;
use tonic::{Request, Response, Status};

use super::Admin;
use super::auth::Scope;
use super::error::{AdminError, AdminResult};
use crate::store::{GroupBy, SpendFilter, Store, TeamRecord, UserRecord};

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
        Err(_) => return Err(AdminError::InvalidArgument(format!("group_by {g} is not a grouping"))),
    })
}

fn nonneg_usd(nanos: i64) -> f64 {
    nanos_to_usd(u64::try_from(nanos).unwrap_or(0))
}

#[tonic::async_trait]
impl<S: Store> pb::spend_service_server::SpendService for Admin<S> {
    async fn query_spend(&self, request: Request<pb::SpendQuery>) -> Result<Response<pb::SpendReport>, Status> {
        let caller = self.caller(&request).await?;
        let q = request.into_inner();
        let mut filter = SpendFilter {
            key_id: q.key_id,
            team_id: q.team_id,
            user_id: q.user_id,
            organization_id: q.organization_id,
            model_group: q.model_group,
            tag: q.tag,
            start_day: day("start_day", &q.start_day)?,
            end_day: day("end_day", &q.end_day)?,
        };
        // A scoped caller's filter is narrowed to its slice, whatever it asked for.
        match caller.list_scope() {
            Scope::All => {}
            Scope::Org(org) => {
                if filter.organization_id.as_ref().is_some_and(|o| *o != org) {
                    return Err(AdminError::NotFound("no such organization".into()).into());
                }
                // Naming another organization's user, team or key answers as if it did not exist.
                if let Some(user) = &filter.user_id {
                    let u: Option<UserRecord> = self.store.get(user).await.ok();
                    if u.and_then(|u| u.organization_id).as_ref() != Some(&org) {
                        return Err(AdminError::NotFound("no such user".into()).into());
                    }
                }
                if let Some(team) = &filter.team_id {
                    let t: Option<TeamRecord> = self.store.get(team).await.ok();
                    if t.and_then(|t| t.organization_id).as_ref() != Some(&org) {
                        return Err(AdminError::NotFound("no such team".into()).into());
                    }
                }
                filter.organization_id = Some(org);
            }
            // A team's admin sees the team's spend; anyone else its own.
            Scope::Own(_) if filter.team_id.as_ref().is_some_and(|t| caller.administers(t)) => {}
            Scope::Own(user) => {
                if filter.user_id.as_ref().is_some_and(|u| *u != user) {
                    return Err(AdminError::NotFound("no such user".into()).into());
                }
                filter.user_id = Some(user);
            }
        }
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
}
