//! The routes an xDS-mode Envoy gets by RDS: LiteLLM's management paths to the control plane,
//! then the routes to the deployments ([`deployment_route_list`], the same list the standalone
//! bootstrap renders as JSON). By RDS rather than in the bootstrap because they follow the
//! deployments: each stream timeout is a route with that `per_try_idle_timeout`, and the
//! routes' timeout is config.yaml's `request_timeout`.

use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, InternalRedirectPolicy, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost, header_matcher, retry_policy, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use sluice_core::fallbacks::FAILOVER_ROUTE_HEADER;
use sluice_core::retries::STREAM_IDLE_HEADER;

use super::resources::{CONTROL_PLANE_CLUSTER, pack};
use crate::envoy_bootstrap::{
    CLUSTER_HEADER, DEPLOYMENT_ROUTE_HEADERS_TO_REMOVE, DeploymentRoute, FAILOVER_HEADER,
    HOST_SELECTION_RETRY_MAX_ATTEMPTS, MANAGEMENT_ROUTE_HEADERS_TO_REMOVE, MANAGEMENT_TIMEOUT_SECS,
    MAX_INTERNAL_REDIRECTS, MAX_RATE_LIMITED_BACKOFF_SECS, ROUTE_CONFIG_NAME, deployment_route_list,
};

/// The route configuration for deployments whose streams have `stream_idle_ms` timeouts, bounded
/// by `route_timeout_secs`.
pub fn route_config(route_timeout_secs: u64, stream_idle_ms: &[u64]) -> RouteConfiguration {
    let management = sluice_core::endpoint::MANAGEMENT_PREFIXES.iter().map(|prefix| management_route(prefix));
    let deployments =
        deployment_route_list(stream_idle_ms).into_iter().map(|r| deployment_route(r, route_timeout_secs));
    RouteConfiguration {
        name: ROUTE_CONFIG_NAME.into(),
        virtual_hosts: vec![VirtualHost {
            name: ROUTE_CONFIG_NAME.into(),
            domains: vec!["*".into()],
            // `x-envoy-attempt-count` on the response: the filter reports a request's retries.
            include_attempt_count_in_response: true,
            routes: management.chain(deployments).collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// LiteLLM's management API on the gateway's own listener, as LiteLLM serves it: its paths go
/// to the control plane over the Envoy's connection to it (the filter lets them pass; the
/// control plane authenticates the caller's key). Only a request the filter did not route: a
/// deployment's own path may look like one of these (Bedrock's `/model/…/converse`) once the
/// filter has rewritten it.
fn management_route(prefix: &str) -> Route {
    let not_routed = HeaderMatcher {
        name: CLUSTER_HEADER.into(),
        invert_match: true,
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)),
        ..Default::default()
    };
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.into())),
            headers: vec![not_routed],
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(CONTROL_PLANE_CLUSTER.into())),
            timeout: Some(seconds(MANAGEMENT_TIMEOUT_SECS)),
            ..Default::default()
        })),
        request_headers_to_remove: MANAGEMENT_ROUTE_HEADERS_TO_REMOVE.map(String::from).into(),
        ..Default::default()
    }
}

/// One route to the deployments (what each setting does: [`DeploymentRoute`]).
fn deployment_route(r: DeploymentRoute, route_timeout_secs: u64) -> Route {
    let mut headers = Vec::new();
    if r.failover {
        headers.push(HeaderMatcher {
            name: FAILOVER_ROUTE_HEADER.into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)),
            ..Default::default()
        });
    }
    if let Some(ms) = r.stream_idle_ms {
        let exact = StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(ms.to_string())),
            ..Default::default()
        };
        headers.push(HeaderMatcher {
            name: STREAM_IDLE_HEADER.into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(exact)),
            ..Default::default()
        });
    }
    let retry_policy = RetryPolicy {
        num_retries: Some(UInt32Value { value: 0 }),
        retry_host_predicate: vec![retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(pack(
                &PreviousHostsPredicate {},
            ))),
        }],
        host_selection_retry_max_attempts: HOST_SELECTION_RETRY_MAX_ATTEMPTS,
        rate_limited_retry_back_off: Some(retry_policy::RateLimitedRetryBackOff {
            reset_headers: vec![retry_policy::ResetHeader {
                name: "retry-after".into(),
                format: retry_policy::ResetHeaderFormat::Seconds.into(),
            }],
            max_interval: Some(Duration { seconds: MAX_RATE_LIMITED_BACKOFF_SECS, nanos: 0 }),
        }),
        per_try_idle_timeout: r.stream_idle_ms.map(millis),
        ..Default::default()
    };
    let internal_redirect_policy = r.failover.then(|| InternalRedirectPolicy {
        redirect_response_codes: vec![307],
        max_internal_redirects: Some(UInt32Value { value: MAX_INTERNAL_REDIRECTS }),
        allow_cross_scheme_redirect: true,
        response_headers_to_copy: vec![FAILOVER_HEADER.into()],
        ..Default::default()
    });
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            headers,
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::ClusterHeader(CLUSTER_HEADER.into())),
            timeout: Some(seconds(route_timeout_secs)),
            host_rewrite_specifier: Some(route_action::HostRewriteSpecifier::AutoHostRewrite(BoolValue {
                value: true,
            })),
            retry_policy: Some(retry_policy),
            internal_redirect_policy,
            ..Default::default()
        })),
        request_headers_to_remove: DEPLOYMENT_ROUTE_HEADERS_TO_REMOVE.map(String::from).into(),
        ..Default::default()
    }
}

fn seconds(secs: u64) -> Duration {
    Duration { seconds: i64::try_from(secs).unwrap_or(i64::MAX), nanos: 0 }
}

fn millis(ms: u64) -> Duration {
    let nanos = i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0);
    Duration { seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX), nanos }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(r: &Route) -> &RouteAction {
        match &r.action {
            Some(route::Action::Route(a)) => a,
            other => panic!("not a route action: {other:?}"),
        }
    }

    fn header_names(r: &Route) -> Vec<&str> {
        r.r#match.as_ref().unwrap().headers.iter().map(|h| h.name.as_str()).collect()
    }

    #[test]
    fn management_paths_go_to_the_control_plane_before_any_deployment_route() {
        let config = route_config(600, &[]);
        let routes = &config.virtual_hosts[0].routes;
        let n = sluice_core::endpoint::MANAGEMENT_PREFIXES.len();
        for r in &routes[..n] {
            let a = action(r);
            assert_eq!(
                a.cluster_specifier,
                Some(route_action::ClusterSpecifier::Cluster(CONTROL_PLANE_CLUSTER.into()))
            );
            let cluster_absent = &r.r#match.as_ref().unwrap().headers[0];
            assert!(cluster_absent.invert_match && cluster_absent.name == CLUSTER_HEADER);
        }
        assert_eq!(routes.len(), n + 2, "then the failover route and the plain one");
        for r in &routes[n..] {
            assert_eq!(
                action(r).cluster_specifier,
                Some(route_action::ClusterSpecifier::ClusterHeader(CLUSTER_HEADER.into()))
            );
            assert_eq!(action(r).timeout, Some(seconds(600)));
        }
        assert!(action(&routes[n]).internal_redirect_policy.is_some());
        assert!(action(&routes[n + 1]).internal_redirect_policy.is_none());
    }

    #[test]
    fn each_stream_timeout_is_a_pair_of_routes_with_that_idle_timeout_ahead_of_the_plain_pair() {
        let config = route_config(120, &[1_500, 30_000]);
        let routes = &config.virtual_hosts[0].routes[sluice_core::endpoint::MANAGEMENT_PREFIXES.len()..];
        let shapes: Vec<(Vec<&str>, Option<Duration>, bool)> = routes
            .iter()
            .map(|r| {
                let a = action(r);
                let idle = a.retry_policy.as_ref().unwrap().per_try_idle_timeout;
                (header_names(r), idle, a.internal_redirect_policy.is_some())
            })
            .collect();
        let idle = |s, n| Some(Duration { seconds: s, nanos: n });
        assert_eq!(
            shapes,
            [
                (vec![FAILOVER_ROUTE_HEADER, STREAM_IDLE_HEADER], idle(1, 500_000_000), true),
                (vec![STREAM_IDLE_HEADER], idle(1, 500_000_000), false),
                (vec![FAILOVER_ROUTE_HEADER, STREAM_IDLE_HEADER], idle(30, 0), true),
                (vec![STREAM_IDLE_HEADER], idle(30, 0), false),
                (vec![FAILOVER_ROUTE_HEADER], None, true),
                (vec![], None, false),
            ]
        );
        let exact = &routes[1].r#match.as_ref().unwrap().headers[0];
        let Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)) = &exact.header_match_specifier else {
            panic!("not a string match: {exact:?}")
        };
        assert_eq!(m.match_pattern, Some(string_matcher::MatchPattern::Exact("1500".into())));
        assert!(routes.iter().all(|r| r.request_headers_to_remove.iter().any(|h| h == STREAM_IDLE_HEADER)));
    }
}
