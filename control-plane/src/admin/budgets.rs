//! `BudgetService` and `CustomerService`: reusable budgets, and the end users of a platform's
//! own product with their budgets and a block switch. Admins change them; admin viewers read.

use sluice_core::time::format_rfc3339_ms;
use sluice_proto::admin::v1 as pb;
use tonic::{Request, Response, Status};

use super::Admin;
use super::error::{AdminError, AdminResult, missing};
use super::validate::{check_name, id_or_new, limits_record, limits_to_proto, next_page_token, page_after, page_size};
use crate::store::{BudgetRecord, CustomerRecord, LimitsRecord, ListFilter, NewAudit, Store, now_ms};

fn budget_proto(b: &BudgetRecord) -> pb::Budget {
    pb::Budget {
        budget_id: b.budget_id.clone(),
        limits: Some(limits_to_proto(&b.limits)),
        created_at: format_rfc3339_ms(b.created_at),
        updated_at: format_rfc3339_ms(b.updated_at),
    }
}

fn customer_proto(c: &CustomerRecord) -> pb::Customer {
    pb::Customer {
        customer_id: c.customer_id.clone(),
        alias: c.alias.clone(),
        budget_id: c.budget_id.clone(),
        limits: Some(limits_to_proto(&c.limits)),
        blocked: c.blocked,
        created_at: format_rfc3339_ms(c.created_at),
        updated_at: format_rfc3339_ms(c.updated_at),
        spend: 0.0,
    }
}

impl<S: Store> Admin<S> {
    /// A customer with what it spent in its current budget window (LiteLLM's `spend`).
    async fn customer_with_spend(&self, c: &CustomerRecord) -> AdminResult<pb::Customer> {
        let limits = crate::customers::customer_limits(&self.store, c).await?;
        let scope = crate::budget::ScopeId::Customer(c.customer_id.clone());
        let spend = crate::budget::current_spend(&self.store, &scope, &limits).await?;
        Ok(pb::Customer { spend, ..customer_proto(c) })
    }

    async fn check_budget_exists(&self, budget_id: Option<&String>) -> AdminResult<()> {
        if let Some(id) = budget_id {
            check_name("budget_id", id)?;
            let _: BudgetRecord = self.store.get(id).await.map_err(missing("budget"))?;
        }
        Ok(())
    }

    async fn set_customer_blocked(
        &self,
        request: Request<pb::CustomerRef>,
        blocked: bool,
    ) -> AdminResult<pb::Customer> {
        let caller = self.caller(&request).await?;
        caller.can_write_global("customers")?;
        let id = request.into_inner().customer_id;
        let action = if blocked { "customer.block" } else { "customer.unblock" };
        let after: CustomerRecord = self
            .store
            .update(
                &id,
                |c: &mut CustomerRecord| {
                    c.blocked = blocked;
                    Ok(())
                },
                NewAudit::new(&caller.actor, action, "customer", &id),
            )
            .await
            .map_err(missing("customer"))?;
        self.config_changed();
        self.customer_with_spend(&after).await
    }
}

#[tonic::async_trait]
impl<S: Store> pb::budget_service_server::BudgetService for Admin<S> {
    async fn create_budget(&self, request: Request<pb::CreateBudgetRequest>) -> Result<Response<pb::Budget>, Status> {
        let caller = self.caller(&request).await?;
        caller.can_write_global("budgets")?;
        let req = request.into_inner();
        let now = now_ms();
        let budget = BudgetRecord {
            budget_id: id_or_new("budget_id", &req.budget_id, "budget")?,
            limits: limits_record(&LimitsRecord::default(), req.limits.as_ref(), &[])?,
            created_at: now,
            updated_at: now,
        };
        let audit = NewAudit::new(&caller.actor, "budget.create", "budget", &budget.budget_id);
        self.store.insert(&budget, audit).await.map_err(AdminError::from)?;
        Ok(Response::new(budget_proto(&budget)))
    }

    async fn update_budget(&self, request: Request<pb::UpdateBudgetRequest>) -> Result<Response<pb::Budget>, Status> {
        let caller = self.caller(&request).await?;
        caller.can_write_global("budgets")?;
        let req = request.into_inner();
        let current: BudgetRecord = self.store.get(&req.budget_id).await.map_err(missing("budget"))?;
        let new_limits = limits_record(&current.limits, req.limits.as_ref(), &req.clear_limits)?;
        let audit = NewAudit::new(&caller.actor, "budget.update", "budget", &req.budget_id);
        let after: BudgetRecord = self
            .store
            .update(
                &req.budget_id,
                |b: &mut BudgetRecord| {
                    b.limits = new_limits;
                    Ok(())
                },
                audit,
            )
            .await
            .map_err(missing("budget"))?;
        // The customers that refer to it take its limits (in the filter config).
        self.config_changed();
        Ok(Response::new(budget_proto(&after)))
    }

    async fn delete_budget(&self, request: Request<pb::BudgetRef>) -> Result<Response<pb::Deleted>, Status> {
        let caller = self.caller(&request).await?;
        caller.can_write_global("budgets")?;
        let id = request.into_inner().budget_id;
        let audit = NewAudit::new(&caller.actor, "budget.delete", "budget", &id);
        self.store.delete::<BudgetRecord>(&id, audit).await.map_err(missing("budget"))?;
        Ok(Response::new(pb::Deleted { id }))
    }

    async fn get_budget(&self, request: Request<pb::BudgetRef>) -> Result<Response<pb::Budget>, Status> {
        let caller = self.caller(&request).await?;
        caller.can_read_global("budgets")?;
        let b: BudgetRecord = self.store.get(&request.into_inner().budget_id).await.map_err(missing("budget"))?;
        Ok(Response::new(budget_proto(&b)))
    }

    async fn list_budgets(
        &self,
        request: Request<pb::ListBudgetsRequest>,
    ) -> Result<Response<pb::ListBudgetsResponse>, Status> {
        let caller = self.caller(&request).await?;
        caller.can_read_global("budgets")?;
        let req = request.into_inner();
        let limit = page_size(req.page_size);
        let filter = ListFilter { column: None, after_id: page_after(req.page_token), limit };
        let (budgets, total) = self.store.list::<BudgetRecord>(&filter).await.map_err(AdminError::from)?;
        let next_page_token = next_page_token(budgets.last().map(|b| b.budget_id.clone()), budgets.len(), limit);
        Ok(Response::new(pb::ListBudgetsResponse {
            budgets: budgets.iter().map(budget_proto).collect(),
            next_page_token,
            total,
        }))
    }
}

#[tonic::async_trait]
impl<S: Store> pb::customer_service_server::CustomerService for Admin<S> {
    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = self.caller(&request).await?;
        caller.can_write_global("customers")?;
        let req = request.into_inner();
        if let Some(alias) = &req.alias {
            check_name("alias", alias)?;
        }
        self.check_budget_exists(req.budget_id.as_ref()).await?;
        let now = now_ms();
        let customer = CustomerRecord {
            customer_id: id_or_new("customer_id", &req.customer_id, "customer")?,
            alias: req.alias,
            budget_id: req.budget_id,
            limits: limits_record(&LimitsRecord::default(), req.limits.as_ref(), &[])?,
            blocked: req.blocked,
            created_at: now,
            updated_at: now,
        };
        let audit = NewAudit::new(&caller.actor, "customer.create", "customer", &customer.customer_id);
        self.store.insert(&customer, audit).await.map_err(AdminError::from)?;
        // Customers' rules travel in the filter config.
        self.config_changed();
        Ok(Response::new(self.customer_with_spend(&customer).await?))
    }

    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = self.caller(&request).await?;
        caller.can_write_global("customers")?;
        let req = request.into_inner();
        let current: CustomerRecord = self.store.get(&req.customer_id).await.map_err(missing("customer"))?;
        if let Some(alias) = &req.alias {
            check_name("alias", alias)?;
        }
        self.check_budget_exists(req.budget_id.as_ref()).await?;
        let new_limits = limits_record(&current.limits, req.limits.as_ref(), &req.clear_limits)?;
        let audit = NewAudit::new(&caller.actor, "customer.update", "customer", &req.customer_id);
        let after: CustomerRecord = self
            .store
            .update(
                &req.customer_id,
                |c: &mut CustomerRecord| {
                    if req.alias.is_some() {
                        c.alias = req.alias.clone();
                    }
                    if req.budget_id.is_some() {
                        c.budget_id = req.budget_id.clone();
                    }
                    c.limits = new_limits;
                    Ok(())
                },
                audit,
            )
            .await
            .map_err(missing("customer"))?;
        self.config_changed();
        Ok(Response::new(self.customer_with_spend(&after).await?))
    }

    async fn delete_customer(&self, request: Request<pb::CustomerRef>) -> Result<Response<pb::Deleted>, Status> {
        let caller = self.caller(&request).await?;
        caller.can_write_global("customers")?;
        let id = request.into_inner().customer_id;
        let audit = NewAudit::new(&caller.actor, "customer.delete", "customer", &id);
        self.store.delete::<CustomerRecord>(&id, audit).await.map_err(missing("customer"))?;
        self.config_changed();
        Ok(Response::new(pb::Deleted { id }))
    }

    async fn get_customer(&self, request: Request<pb::CustomerRef>) -> Result<Response<pb::Customer>, Status> {
        let caller = self.caller(&request).await?;
        caller.can_read_global("customers")?;
        let c: CustomerRecord = self.store.get(&request.into_inner().customer_id).await.map_err(missing("customer"))?;
        Ok(Response::new(self.customer_with_spend(&c).await?))
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        let caller = self.caller(&request).await?;
        caller.can_read_global("customers")?;
        let req = request.into_inner();
        let limit = page_size(req.page_size);
        let filter = ListFilter { column: None, after_id: page_after(req.page_token), limit };
        let (customers, total) = self.store.list::<CustomerRecord>(&filter).await.map_err(AdminError::from)?;
        let next_page_token = next_page_token(customers.last().map(|c| c.customer_id.clone()), customers.len(), limit);
        let mut with_spend = Vec::with_capacity(customers.len());
        for c in &customers {
            with_spend.push(self.customer_with_spend(c).await?);
        }
        Ok(Response::new(pb::ListCustomersResponse { customers: with_spend, next_page_token, total }))
    }

    async fn block_customer(&self, request: Request<pb::CustomerRef>) -> Result<Response<pb::Customer>, Status> {
        Ok(Response::new(self.set_customer_blocked(request, true).await?))
    }

    async fn unblock_customer(&self, request: Request<pb::CustomerRef>) -> Result<Response<pb::Customer>, Status> {
        Ok(Response::new(self.set_customer_blocked(request, false).await?))
    }
}
