//! The report of `cargo xtask bench`: the figures (medians, spreads, ratios paired per round
//! with bare Envoy) and the Markdown tables they go into.

use crate::bench::{BARE, KINDS, Kind, Run, SCENARIOS, Scenario, WrkResult, median};
use crate::proc;

/// Median, min and max over the rounds.
pub(crate) type Spread = (f64, f64, f64);

pub(crate) fn spread(v: Vec<f64>) -> Option<Spread> {
    if v.is_empty() {
        return None;
    }
    let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    Some((median(v), lo, hi))
}

pub(crate) fn of(run: &Run, s: Scenario, k: Kind, f: fn(&WrkResult) -> f64) -> Option<Spread> {
    spread(run.runs(s, k).iter().map(f).collect())
}

/// `f(a's run in scenario sa) − f(b's run in sb)`, paired per round (the same minute of a
/// shared machine), then median and range over the rounds.
fn diff_in(
    run: &Run,
    (sa, a): (Scenario, Kind),
    (sb, b): (Scenario, Kind),
    f: fn(&WrkResult) -> f64,
) -> Option<Spread> {
    spread(run.runs(sa, a).iter().zip(run.runs(sb, b)).map(|(x, y)| f(x) - f(y)).collect())
}

/// `f(a's run) − f(b's run)` in one scenario, paired per round.
fn diff(run: &Run, s: Scenario, a: Kind, b: Kind, f: fn(&WrkResult) -> f64) -> Option<Spread> {
    diff_in(run, (s, a), (s, b), f)
}

/// `f(this Envoy's run) − f(bare's paired run)` (`Scenario::bare_pair`), per round.
fn added(run: &Run, s: Scenario, k: Kind, f: fn(&WrkResult) -> f64) -> Option<Spread> {
    diff_in(run, (s, k), (s.bare_pair(), KINDS[BARE]), f)
}

/// `g(this Envoy's run, bare's paired run)` per round, then median and range.
fn vs_bare(run: &Run, s: Scenario, k: Kind, g: fn(&WrkResult, &WrkResult) -> f64) -> Option<Spread> {
    spread(run.runs(s, k).iter().zip(run.runs(s.bare_pair(), KINDS[BARE])).map(|(r, b)| g(r, b)).collect())
}

/// Lookups Envoy counted over requests sent, over all rounds (the xDS rows): (share, lookups,
/// requests), or `None` where no counter was read.
fn looked_up(run: &Run, s: Scenario, k: Kind) -> Option<(f64, f64, f64)> {
    let runs = run.runs(s, k);
    if runs.is_empty() || runs.iter().any(|r| r.lookups.is_none()) {
        return None;
    }
    let (lookups, requests) = runs.iter().fold((0.0, 0.0), |(l, n), r| (l + r.lookups.unwrap_or(0.0), n + r.requests));
    Some((lookups / requests.max(1.0), lookups, requests))
}

/// Requests the response cache answered over requests sent, over all rounds (the cache rows):
/// (share, hits, requests), or `None` where no counter was read.
fn answered_from_cache(run: &Run, s: Scenario, k: Kind) -> Option<(f64, f64, f64)> {
    let runs = run.runs(s, k);
    if runs.is_empty() || runs.iter().any(|r| r.cache_hits.is_none()) {
        return None;
    }
    let (hits, requests) = runs.iter().fold((0.0, 0.0), |(h, n), r| (h + r.cache_hits.unwrap_or(0.0), n + r.requests));
    Some((hits / requests.max(1.0), hits, requests))
}

/// ", 100.0 % looked up (160 lookups, 160 requests)" for the xDS rows, else nothing.
fn looked_up_text(run: &Run, s: Scenario, k: Kind) -> String {
    looked_up(run, s, k).map_or(String::new(), |(share, lookups, requests)| {
        format!(", {:.1} % looked up ({lookups:.0} lookups, {requests:.0} requests)", share * 100.0)
    })
}

/// Throughput ratio: this Envoy's req/s ÷ bare's.
fn rps_ratio(r: &WrkResult, b: &WrkResult) -> f64 {
    r.rps / b.rps.max(1.0)
}

/// CPU ratio: bare's CPU per request ÷ this Envoy's (≥ 1 is cheaper, read like throughput).
fn cpu_ratio(r: &WrkResult, b: &WrkResult) -> f64 {
    b.envoy_cpu_us_per_request / r.envoy_cpu_us_per_request.max(0.001)
}

fn cpu(r: &WrkResult) -> f64 {
    r.envoy_cpu_us_per_request
}

fn rss(run: &Run, k: Kind) -> (u64, u64) {
    (run.rss_before.get(k.index()).copied().unwrap_or(0), run.rss_after.get(k.index()).copied().unwrap_or(0))
}

fn rss_ratio(run: &Run, k: Kind) -> f64 {
    rss(run, k).1 as f64 / rss(run, KINDS[BARE]).1.max(1) as f64
}

/// "12.3 (10.1–14.0)", with `digits` decimals.
pub(crate) fn fmt(s: Spread, digits: usize) -> String {
    format!("{:.d$} ({:.d$}–{:.d$})", s.0, s.1, s.2, d = digits)
}

/// "+12.3 (+10.1 to +14.0)".
pub(crate) fn fmt_signed(s: Spread, digits: usize) -> String {
    format!("{:+.d$} ({:+.d$} to {:+.d$})", s.0, s.1, s.2, d = digits)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// The short form of why an Envoy has no figures: "not built", "could not be configured".
fn short(reason: &str) -> &str {
    reason.split(':').next().unwrap_or(reason)
}

/// One cell of the ratio table: what this Envoy costs against bare Envoy in one scenario.
fn ratio_cell(run: &Run, s: Scenario, k: Kind) -> String {
    if !s.applies(k) {
        return "—".to_owned();
    }
    if let Some(reason) = run.missing_in(s, k) {
        return short(reason).to_owned();
    }
    if s.is_latency() {
        let p50 = added(run, s, k, |r| r.p50_us);
        let p99 = added(run, s, k, |r| r.p99_us);
        return match (p50, p99) {
            (Some(a), Some(b)) => format!("p50 {:+.0} µs, p99 {:+.0} µs", a.0, b.0),
            _ => "—".to_owned(),
        };
    }
    let (Some(t), Some(c), Some(a)) =
        (vs_bare(run, s, k, rps_ratio), vs_bare(run, s, k, cpu_ratio), added(run, s, k, cpu))
    else {
        return "—".to_owned();
    };
    let refused = refused_share(run, s, k);
    let refused = if refused > 0.0 { format!(" ({:.0} % refused)", refused * 100.0) } else { String::new() };
    let lookups =
        looked_up(run, s, k).map_or(String::new(), |(share, _, _)| format!(" ({:.0} % looked up)", share * 100.0));
    let lookups = lookups
        + &answered_from_cache(run, s, k)
            .map_or(String::new(), |(share, _, _)| format!(" ({:.0} % from the cache)", share * 100.0));
    // Bursts of 80 are bound by latency and the lookup budget, not by the Envoy's core: their
    // req/s is no throughput to set against a saturated run.
    let throughput = if s.is_burst() { String::new() } else { format!("{:.2}× req/s, ", t.0) };
    format!("{throughput}{:.2}× CPU, {:+.1} µs{refused}{lookups}", c.0, a.0)
}

/// What a row costs each Sluice build in CPU per request over its own chat at 32 connections
/// in the same round (req/s between two runs of one Envoy moves with whatever shares the load
/// core), as "wasm +x µs of CPU per request; native …"; None when neither build ran it.
fn cpu_over_own_chat(run: &Run, s: Scenario) -> Option<String> {
    let parts: Vec<String> = [Kind::SluiceWasm, Kind::SluiceNative]
        .into_iter()
        .filter_map(|k| {
            let added = diff_in(run, (s, k), (Scenario::Chat32, k), cpu)?;
            Some(format!("{} {} µs of CPU per request", k.name(), fmt_signed(added, 1)))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The translated row, against each build's own untranslated chat of the same round.
fn translation_notes(run: &Run) -> String {
    let Some(cost) = cpu_over_own_chat(run, Scenario::Translated32) else { return String::new() };
    format!(
        "**The translated row.** An OpenAI client's `/v1/chat/completions` for `claude-bench`, an `anthropic/` deployment \
on the same upstream: the filter rewrites the request into Anthropic's Messages format for `/v1/messages`, and the answer \
(the same ~1.4 KB of text as a Messages response with `usage`) back into a `chat.completion`, checked before the rounds. \
It is paired with bare Envoy's chat at 32 connections, the same request from the client's side. Translation's own cost, \
against the same Envoy's untranslated chat at 32 connections in the same round: {cost}.\n\n"
    )
}

/// The customer row: governance checks in use, against the same Envoy's plain chat.
fn customer_notes(run: &Run) -> String {
    let Some(cost) = cpu_over_own_chat(run, Scenario::Customer32) else { return String::new() };
    format!(
        "**The customer row.** The same chat naming an end user (`\"user\": \"bench-customer\"`) whom config.yaml's \
`customers:` gives an RPM limit and a budget it never reaches: each request is checked against the customer and \
reserved and settled on its counter too (one more limited scope). The checks' cost, against the same Envoy's chat \
without an end user in the same round: {cost}. When unused (no customer, no gateway budget, no allow-list) they cost \
a branch each: the chat row is their \"unused\" figure.\n\n"
    )
}

/// The response cache's rows: what a hit and a miss cost against the same Envoy's plain chat,
/// with the hit rates Envoy counted.
fn cache_notes(run: &Run) -> String {
    let (Some(hit), Some(miss)) =
        (cpu_over_own_chat(run, Scenario::CacheHit32), cpu_over_own_chat(run, Scenario::CacheMiss32))
    else {
        return String::new();
    };
    let mut rates = Vec::new();
    for k in KINDS.iter().filter(|k| k.is_sluice()) {
        for (s, what) in [(Scenario::CacheHit32, "hit row"), (Scenario::CacheMiss32, "miss row")] {
            if let Some((share, hits, requests)) = answered_from_cache(run, s, *k) {
                rates.push(format!(
                    "{} {what}: {:.1} % from the cache ({hits:.0} of {requests:.0})",
                    k.name(),
                    share * 100.0
                ));
            }
        }
    }
    format!(
        "**The response cache rows.** The bench config turns LiteLLM's cache on with `mode: default_off`, so only \
requests that ask (`\"cache\": {{\"use-cache\": true}}`) use it and every other row pays one branch for it. The hit row \
asks the same chat again and again: Sluice answers from this Envoy's shared data, no upstream; bare Envoy and the no-op \
filters forward it like any chat (their row is what the client would wait for without a cache). The miss row asks a chat \
never sent before on every request: Sluice digests it, looks it up, copies the answer and stores it (the cache's 200 \
slots overwritten in turn). Hit rates as Envoy counted them: {}. A hit's CPU against the same Envoy's plain chat in the \
same round (negative: cheaper than going upstream): {hit}; a miss's: {miss}.\n\n",
        rates.join("; ")
    )
}

/// How the xDS rows were made, their miss rate as Envoy counted it, and a miss against a hit.
fn xds_notes(run: &Run) -> String {
    if run.xds.iter().all(|x| x.missing.is_some()) {
        return String::new();
    }
    let mut keys = Vec::new();
    let mut floods = Vec::new();
    let mut misses = Vec::new();
    for x in run.xds.iter().filter(|x| x.missing.is_none()) {
        let k = x.kind;
        keys.push(format!("{} for {} ({:.0} keys/s)", x.keys_created, k.name(), x.keys_per_s));
        if let Some(f) = x.flood {
            floods.push(format!(
                "{}: {} looked up, {} answered 429, of {}",
                k.name(),
                f.lookups,
                f.refused,
                f.requests
            ));
        }
        let rate = looked_up(run, Scenario::XdsMiss, k).map_or("no lookup count".to_owned(), |(share, l, n)| {
            // Requests served from the cache would make it a hit measurement, whatever its label.
            let warning = match share {
                s if s < 0.5 => " — NOT a miss measurement: most requests were served from the cache",
                s if s < 0.99 => " — some requests were served from the cache",
                _ => "",
            };
            format!("{l:.0} lookups for {n:.0} requests ({:.1} %){warning}", share * 100.0)
        });
        let hit_rate = looked_up(run, Scenario::XdsHitBurst, k)
            .map_or(String::new(), |(_, l, n)| format!(", the hit bursts {l:.0} for {n:.0}"));
        let vs_hit = |f: fn(&WrkResult) -> f64| diff_in(run, (Scenario::XdsMiss, k), (Scenario::XdsHitBurst, k), f);
        let cost = match (vs_hit(cpu), vs_hit(|r| r.p50_us), vs_hit(|r| r.p99_us)) {
            (Some(c), Some(p50), Some(p99)) => format!(
                "; **a miss costs {} µs of Envoy CPU more than a hit**, p50 {:+.0} µs, p99 {:+.0} µs",
                fmt_signed(c, 1),
                p50.0,
                p99.0
            ),
            _ => String::new(),
        };
        misses.push(format!("{}: {rate}{hit_rate}{cost}", k.name()));
    }
    let floods = if floods.is_empty() {
        String::new()
    } else {
        format!(
            " (measured in the warm-up, {} new keys at once from one address: {})",
            crate::bench_xds::FLOOD,
            floods.join("; ")
        )
    };
    format!(
        "**The xDS rows.** Each Sluice build also runs in xDS mode: a control plane (`sluice serve`, SQLite, the CLI's \
debug build, on the load core; its data-plane port on mTLS from `sluice pki`) and a front Envoy from `sluice envoy-config \
--xds` that gets its clusters, the filter's config and the provider credential from it. Keys were made through the admin \
API (`sluice key create`) before the rounds: {}. The hit rows repeat one key, cached (a request with it just before each \
hit run); every request of the miss row carries a key its Envoy has never seen, and Envoy's own `sluice.key_lookups` \
counter (/stats, read before and after each run) says how many were looked up. **Misses are measured in bursts, not at \
saturation**: the filter budgets lookups (per worker 50 a second and 100 at once; per client address 10 a second and 20 \
at once; `key_lookup.rate`, which the control plane sends at its defaults), so a client sending new keys as fast as it can \
gets 429 `key_lookup_rate_limited` past its first 20{floods}. A burst is 80 requests from 8 loopback addresses \
(127.0.0.10–17, one keep-alive connection each, 10 requests one after the other), {} bursts per run, 1.8 s apart so the \
budget refills; a burst's CPU is the Envoy's (/proc/PID/task/*/schedstat, in ns) over the burst and the 0.6 s after it \
(the ticks that ship its usage, sync its limits and flush its metrics), less the Envoy's idle rate over that time (the \
mean of 1.2 s measured before and after); its req/s is over the bursts' own time, bound by the lookups' latency, and no \
throughput ratio is given for it. Bare Envoy has no key cache to miss: every xDS row is paired with bare Envoy's chat at 32 \
connections of the same round (the same request from the client's side), so the burst rows' \"added\" figures also hold \
what bursts of 8 connections cost any Envoy over a saturated run; the miss's own cost is the miss row against the hit \
row's same bursts, paired per round. The miss row's latency includes the lookup at the control plane (SQLite, debug \
build, sharing the load core with the client) with 8 requests in flight. Miss rate, and a miss's own cost, paired per \
round: {}.\n\n",
        keys.join(", "),
        run.bursts,
        misses.join("; "),
    )
}

/// The share of requests answered non-2xx, over all rounds.
fn refused_share(run: &Run, s: Scenario, k: Kind) -> f64 {
    let runs = run.runs(s, k);
    let (bad, all) = runs.iter().fold((0.0, 0.0), |(b, a), r| (b + r.non_2xx, a + r.requests));
    if all > 0.0 { bad / all } else { 0.0 }
}

pub(crate) fn render(run: &Run) -> String {
    let date = proc::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"], &[]).unwrap_or_default();
    let kernel = proc::output("uname", &["-r"], &[]).unwrap_or_default();
    let cores = run.cores;
    let pinning = if run.pinned {
        "the measured Envoy pinned to core 0; wrk (1 thread), the upstream Envoy and the time-to-first-token client on core 1"
    } else {
        "nothing pinned (`--no-pin`, fewer than two cores, or no `taskset`)"
    };
    let mut out = format!(
        "Measured {} on this machine ({cores} cores, Linux {}), `{}`: {} round(s), {} per run, every scenario run for every \
Envoy in each round in a rotating order; each front Envoy `--concurrency 1`, {pinning}. Upstream: one Envoy answering with \
`direct_response` (an OpenAI chat completion with `usage`, or an SSE stream ending in a usage chunk). Load average {} before, \
{} after. Figures are the median (min–max) over rounds; ratios and \"added\" pair each run with bare Envoy's run of the same \
round and scenario. CPU is the Envoy process's utime + stime from /proc per request; CPU ratio = bare's ÷ this Envoy's \
(≥ 1 is cheaper, read like the throughput ratio).\n\n",
        date.trim(),
        kernel.trim(),
        run.command,
        run.rounds,
        run.duration,
        run.load_before,
        run.load_after,
    );

    out.push_str("**Against bare Envoy** (throughput ratio, CPU ratio, added CPU per request; latency: added µs)\n\n");
    out.push_str("| scenario |");
    for k in &KINDS[1..] {
        out.push_str(&format!(" {} |", k.name()));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(KINDS.len() - 1));
    out.push('\n');
    for s in SCENARIOS {
        out.push_str(&format!("| {} |", s.label()));
        for k in &KINDS[1..] {
            out.push_str(&format!(" {} |", ratio_cell(run, s, *k)));
        }
        out.push('\n');
    }
    out.push_str("| Envoy RSS after the run |");
    for k in &KINDS[1..] {
        let cell = run.missing(*k).map_or_else(|| format!("{:.2}×", rss_ratio(run, *k)), |r| short(r).to_owned());
        out.push_str(&format!(" {cell} |"));
    }
    out.push_str("\n\n");
    out.push_str(&targets(run));
    out.push_str(&per_envoy(run));
    out.push_str(&not_measured(run));
    out
}

/// Issue 15's targets, met or missed.
fn targets(run: &Run) -> String {
    let mut out =
        String::from("**Issue 15's targets**\n\n| target | Sluice (wasm) | Sluice (native) |\n|---|---|---|\n");
    // A cell: the figure and its verdict, or why there is none. `native_only` targets show the
    // wasm figure for reference, without a verdict.
    let cell =
        |k: Kind, value: Option<f64>, unit: &str, ok: fn(f64) -> bool, native_only: bool| match (run.missing(k), value)
        {
            (Some(reason), _) => short(reason).to_owned(),
            (None, None) => "—".to_owned(),
            (None, Some(v)) if native_only && k == Kind::SluiceWasm => format!("{v:.2}{unit} (reference)"),
            (None, Some(v)) => format!("{v:.2}{unit} ({})", verdict(ok(v))),
        };
    let row = |label: &str, f: &dyn Fn(Kind) -> Option<f64>, unit: &str, ok: fn(f64) -> bool, native_only: bool| {
        format!(
            "| {label} | {} | {} |\n",
            cell(Kind::SluiceWasm, f(Kind::SluiceWasm), unit, ok, native_only),
            cell(Kind::SluiceNative, f(Kind::SluiceNative), unit, ok, native_only)
        )
    };
    let med = |s: Option<Spread>| s.map(|x| x.0);
    out += &row(
        "chat at 32 connections: throughput ≥ 0.85× bare (native)",
        &|k| med(vs_bare(run, Scenario::Chat32, k, rps_ratio)),
        "×",
        |v| v >= 0.85,
        true,
    );
    out += &row(
        "chat at 32 connections: CPU per request ≥ 0.85× bare (native)",
        &|k| med(vs_bare(run, Scenario::Chat32, k, cpu_ratio)),
        "×",
        |v| v >= 0.85,
        true,
    );
    out += &row(
        "Sluice's own CPU over its runtime's no-op filter ≤ 10 µs (wasm; native for reference)",
        &|k| {
            let floor = if k == Kind::SluiceWasm { Kind::NoopWasm } else { Kind::NoopNative };
            med(diff(run, Scenario::Chat32, k, floor, cpu))
        },
        " µs",
        |v| v <= 10.0,
        false,
    );
    out += &row(
        "streaming at 32 connections: throughput ≥ 0.85× bare (native)",
        &|k| med(vs_bare(run, Scenario::Stream32, k, rps_ratio)),
        "×",
        |v| v >= 0.85,
        true,
    );
    out += &row(
        "1 connection: added p50 ≤ 100 µs",
        &|k| med(added(run, Scenario::Chat1, k, |r| r.p50_us)),
        " µs",
        |v| v <= 100.0,
        false,
    );
    out += &row(
        "1 connection: added p99 ≤ 250 µs",
        &|k| med(added(run, Scenario::Chat1, k, |r| r.p99_us)),
        " µs",
        |v| v <= 250.0,
        false,
    );
    out += &row("Envoy RSS after the run ≤ 1.3× bare", &|k| Some(rss_ratio(run, k)), "×", |v| v <= 1.3, false);
    out.push('\n');
    out
}

/// Every Envoy in every scenario, with the spread over rounds.
fn per_envoy(run: &Run) -> String {
    let mut out = String::from(
        "**Per Envoy** (median (min–max) over rounds; added CPU paired per round with bare Envoy)\n\n\
| scenario | Envoy | req/s | Envoy CPU per request | added CPU vs bare | Envoy's core busy | p50 | p99 |\n|---|---|---|---|---|---|---|---|\n",
    );
    for s in SCENARIOS {
        for k in KINDS {
            if !s.applies(k) || run.missing_in(s, k).is_some() || run.runs(s, k).is_empty() {
                continue;
            }
            let refused = refused_share(run, s, k);
            let mut name = k.name().to_owned();
            if refused > 0.0 {
                let what = if s == Scenario::Limited { "answered 429" } else { "not 2xx" };
                name.push_str(&format!(", {:.0} % {what}", refused * 100.0));
            }
            name.push_str(&looked_up_text(run, s, k));
            let opt = |v: Option<Spread>, d: usize, unit: &str| {
                v.map_or("—".to_owned(), |v| format!("{}{unit}", fmt(v, d)))
            };
            let (rps, cpu_cell, added, busy) = if s == Scenario::Ttft1 {
                ("—".to_owned(), "—".to_owned(), "—".to_owned(), "—".to_owned())
            } else {
                let added = if k == KINDS[BARE] {
                    "—".to_owned()
                } else {
                    added(run, s, k, cpu).map_or("—".to_owned(), |v| format!("{} µs", fmt_signed(v, 1)))
                };
                // How much of one core the Envoy used: near 100 % it was the bottleneck; well
                // below, something else was (the load core, or a busy machine).
                let busy = of(run, s, k, |r| r.rps * r.envoy_cpu_us_per_request / 1e4)
                    .map_or("—".to_owned(), |v| format!("{:.0} %", v.0));
                (opt(of(run, s, k, |r| r.rps), 0, ""), opt(of(run, s, k, cpu), 1, " µs"), added, busy)
            };
            out.push_str(&format!(
                "| {} | {name} | {rps} | {cpu_cell} | {added} | {busy} | {} | {} |\n",
                s.label(),
                opt(of(run, s, k, |r| r.p50_us), 0, " µs"),
                opt(of(run, s, k, |r| r.p99_us), 0, " µs"),
            ));
        }
    }
    out.push_str("\n| Envoy | RSS before the rounds | RSS after | after, ÷ bare |\n|---|---|---|---|\n");
    for k in KINDS {
        if run.missing(k).is_none() {
            let (before, after) = rss(run, k);
            out.push_str(&format!("| {} | {before} KiB | {after} KiB | {:.2}× |\n", k.name(), rss_ratio(run, k)));
        }
    }
    out.push('\n');
    out
}

fn not_measured(run: &Run) -> String {
    let mut out = translation_notes(run);
    out.push_str(&customer_notes(run));
    out.push_str(&cache_notes(run));
    out.push_str(&xds_notes(run));
    out.push_str(
        "**Not measured here.** Key-cache misses at saturation (the filter's lookup budget refuses them, above, and \
`sluice serve` has no setting to raise it for a measurement), the xDS-mode Envoys' memory, and a translated stream.",
    );
    for k in KINDS {
        if let Some(reason) = run.missing(k) {
            out.push_str(&format!(" {}: {reason}.", k.name()));
        }
    }
    for x in &run.xds {
        if let Some(reason) = &x.missing {
            out.push_str(&format!(" {} in xDS mode: {reason}.", x.kind.name()));
        }
    }
    out.push_str(&format!(
        "\n\n**Reading.** The time to first token is measured on {} streams per Envoy and round, one connection each; \
the upstream sends the whole stream at once, so it is the gateway's added latency to the first event, not a model's.",
        run.ttft_per_round
    ));
    for (k, tokens) in &run.metered {
        match tokens {
            Ok(n) => out.push_str(&format!(
                " {} counted {n} completion tokens over the run (the upstream's `usage`, metered).",
                k.name()
            )),
            Err(e) => out.push_str(&format!(" {}'s metering could not be read: {e}.", k.name())),
        }
    }
    out.push('\n');
    out.push_str(
        "\nThe limit-hit row: Sluice refuses with a 429 before any upstream call, bare Envoy and the no-op filters \
(which check no key) serve the same requests; its CPU ratio says how much cheaper an over-limit request is for Sluice \
than a served one is for bare Envoy (> 1: cheaper), i.e. what a client hammering past its limit costs the gateway.\n",
    );
    out
}
