//! netagent's Prometheus metrics (docs/metrics.md), through the `metrics` crate like the
//! server's. Each agent has its own recorder rather than the process-wide one: the system
//! tests and the demo run several cells' agents in one process, and each must report only
//! its own figures.

use metrics::{Counter, Gauge, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Handles to every metric of one agent, and what renders them.
pub struct Telemetry {
    handle: PrometheusHandle,
    pub converges: Counter,
    pub renew_failures: Counter,
    pub applies_diff: Counter,
    pub applies_full: Counter,
    pub apply_errors: Counter,
    pub policies: Gauge,
    pub allow_entries: Gauge,
    pub last_apply_seconds: Gauge,
    pub enforcement_disabled: Gauge,
    pub store_errors: Counter,
    pub discovery_names: Gauge,
    pub egress_entries: Gauge,
    pub port_mappings: Gauge,
    pub security_groups: Gauge,
    pub traffic_log_lines: Counter,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let recorder: PrometheusRecorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe(&recorder);
            Telemetry {
                handle,
                converges: metrics::counter!("c2c_netagent_converges_total"),
                renew_failures: metrics::counter!("c2c_netagent_renew_failures_total"),
                applies_diff: metrics::counter!("c2c_netagent_policy_applies_total", "kind" => "diff"),
                applies_full: metrics::counter!("c2c_netagent_policy_applies_total", "kind" => "full"),
                apply_errors: metrics::counter!("c2c_netagent_policy_apply_errors_total"),
                policies: metrics::gauge!("c2c_netagent_policies"),
                allow_entries: metrics::gauge!("c2c_netagent_allow_entries"),
                last_apply_seconds: metrics::gauge!("c2c_netagent_last_apply_seconds"),
                enforcement_disabled: metrics::gauge!("c2c_netagent_enforcement_disabled"),
                store_errors: metrics::counter!("c2c_netagent_container_store_errors_total"),
                discovery_names: metrics::gauge!("c2c_netagent_discovery_names"),
                egress_entries: metrics::gauge!("c2c_netagent_egress_entries"),
                port_mappings: metrics::gauge!("c2c_netagent_port_mappings"),
                security_groups: metrics::gauge!("c2c_netagent_security_groups"),
                traffic_log_lines: metrics::counter!("c2c_netagent_traffic_log_lines_total"),
            }
        })
    }

    /// Prometheus' text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

fn describe(recorder: &PrometheusRecorder) {
    use metrics::{KeyName, SharedString, Unit};
    let help = |name: &'static str, text: &'static str| {
        (KeyName::from_const_str(name), Option::<Unit>::None, SharedString::const_str(text))
    };
    for (name, unit, text) in [
        help("c2c_netagent_converges_total", "Overlay convergence cycles completed."),
        help("c2c_netagent_discovery_names", "Internal hostnames the cell's DNS responder answers."),
        help("c2c_netagent_renew_failures_total", "Lease renewals that failed."),
        help("c2c_netagent_egress_entries", "Egress entries installed (after merging overlapping rules)."),
        help("c2c_netagent_port_mappings", "Port mappings installed."),
        help("c2c_netagent_security_groups", "Security groups known for the spaces on this cell."),
        help("c2c_netagent_traffic_log_lines_total", "Lines written to the traffic log."),
        help("c2c_netagent_policy_applies_total", "Changes applied to the kernel, by kind."),
        help("c2c_netagent_policy_apply_errors_total", "Changes the kernel refused."),
        help(
            "c2c_netagent_container_store_errors_total",
            "Reads of the container store that failed (the last good containers stay in force).",
        ),
    ] {
        recorder.describe_counter(name, unit, text);
    }
    for (name, unit, text) in [
        help("c2c_netagent_policies", "Policies concerning this cell's apps."),
        help("c2c_netagent_allow_entries", "Allow entries installed."),
        help("c2c_netagent_last_apply_seconds", "Time the last change took in the kernel."),
        help("c2c_netagent_enforcement_disabled", "1 when enforcement = \"none\": no policy is enforced."),
    ] {
        recorder.describe_gauge(name, unit, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_agents_report_their_own_figures() {
        let (a, b) = (Telemetry::new(), Telemetry::new());
        a.policies.set(3.0);
        a.applies_diff.increment(2);
        b.policies.set(7.0);
        let text = a.render();
        assert!(text.contains("c2c_netagent_policies 3"), "{text}");
        assert!(text.contains("c2c_netagent_policy_applies_total{kind=\"diff\"} 2"), "{text}");
        assert!(text.contains("# HELP c2c_netagent_policies Policies concerning"), "{text}");
        assert!(b.render().contains("c2c_netagent_policies 7"));
    }
}
