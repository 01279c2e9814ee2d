//! The dashboard's HTML, rendered on the server: every value escaped, charts as inline SVG,
//! machine-readable figures (exact wei, basis points, the block) in `data-` attributes so that
//! a test, or a script, can compare the page with the chain.

use std::fmt::Write;

use alloy::primitives::U256;

use super::payments::Payments;
use crate::chain::Deployment;
use crate::chain::audit::{
    Auditor, HistoryEvent, NodeAudit, NodeEvent, ValidatorAudit, Value, format_tokens, peer_id_text,
};
use crate::gateway::RouteReport;
use crate::when::utc;

/// What the gateway serving the page knows of routing.
pub struct GatewayView {
    pub unserved: Vec<u16>,
    pub banned: usize,
    pub report: RouteReport,
}

/// `&`, `<`, `>`, `"` and `'` as entities: text from the chain (multiaddrs, revert reasons)
/// is anyone's to choose.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2430}
header{background:#14213d;color:#fff;padding:14px 28px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c9d2e3}main{padding:18px 28px;max-width:1400px}
section{background:#fff;border:1px solid #dde2ea;border-radius:8px;padding:14px 18px;margin:0 0 18px}
h2{font-size:16px;margin:0 0 10px}h3{font-size:14px;margin:14px 0 6px}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #edf0f4;white-space:nowrap}
th{font-weight:600;color:#4a5568;background:#fafbfc}td.num,th.num{text-align:right}
.ok{color:#1e7b34;font-weight:600}.bad{color:#b42318;font-weight:600}.muted{color:#718096}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#fff;border:1px solid #dde2ea;
border-radius:8px;padding:10px 16px;min-width:150px}.card b{display:block;font-size:20px}
a{color:#1a56db;text-decoration:none}a:hover{text-decoration:underline}code{font-size:12px}";

fn layout(title: &str, subtitle: &str, block: u64, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\"><title>{title}</title><style>{STYLE}</style></head>\
         <body data-block=\"{block}\"><header><h1>{title}</h1><p>{subtitle}</p></header>\
         <main>{body}</main></body></html>",
        title = escape(title),
        subtitle = escape(subtitle),
    )
}

pub fn error_page(message: &str) -> String {
    layout(
        "InferGrid dashboard",
        "the chain could not be read",
        0,
        &format!("<section><h2>Error</h2><p class=\"bad\">{}</p></section>", escape(message)),
    )
}

/// `12.5%` for basis points.
fn percent(bps: u32) -> String {
    format!("{:.1}%", f64::from(bps) / 100.0)
}

/// The first 8 and last 6 characters of a long id.
pub(super) fn short(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 16 {
        return text.to_owned();
    }
    let (head, tail): (String, String) =
        (chars[..8].iter().collect(), chars[chars.len() - 6..].iter().collect());
    format!("{head}…{tail}")
}

fn standing(node: &NodeAudit) -> (&'static str, String) {
    if node.jailed {
        ("bad", format!("jailed until {}", utc(node.jailed_until)))
    } else if node.active {
        ("ok", "active".into())
    } else {
        ("bad", "inactive".into())
    }
}

pub fn overview(
    deployment: &Deployment,
    auditor: &Auditor,
    nodes: &[NodeAudit],
    validators: &[ValidatorAudit],
    payments: &Payments,
    gateway: Option<&GatewayView>,
) -> String {
    let time = nodes.first().map_or(String::new(), |n| format!(", {}", utc(n.as_of_time)));
    let subtitle = format!(
        "chain {} · registry {} · as of block {}{time}",
        deployment.chain_id,
        auditor.registry(),
        auditor.block()
    );
    let mut body = String::new();
    let stake: U256 = nodes.iter().map(|n| n.stake).sum();
    let active = nodes.iter().filter(|n| n.active).count();
    let slashed: U256 = nodes.iter().map(|n| n.total_slashed).sum();
    let _ = write!(
        body,
        "<section class=\"cards\"><div class=\"card\">operators<b>{}</b></div>\
         <div class=\"card\">active<b>{active}</b></div>\
         <div class=\"card\">staked<b>{}</b></div>\
         <div class=\"card\">slashed<b>{}</b></div>\
         <div class=\"card\">block<b>{}</b></div></section>",
        nodes.len(),
        escape(&format_tokens(stake)),
        escape(&format_tokens(slashed)),
        auditor.block()
    );
    if let Some(gateway) = gateway {
        body.push_str(&gateway_section(gateway));
    }
    body.push_str("<section><h2>Operators</h2><table><thead><tr><th>operator</th><th>peer</th>\
        <th>blocks</th><th class=\"num\">price (wei/token)</th><th class=\"num\">stake</th>\
        <th class=\"num\">reputation</th><th class=\"num\">passed</th><th class=\"num\">failed</th>\
        <th class=\"num\">faults</th><th class=\"num\">slashed</th><th>status</th></tr></thead><tbody>");
    for node in nodes {
        let (class, status) = standing(node);
        let peer = peer_id_text(&node.peer_id);
        let _ = write!(
            body,
            "<tr class=\"operator\" data-operator=\"{op}\" data-stake-wei=\"{stake}\" \
             data-reputation-bps=\"{rep}\"><td><a href=\"/dashboard/node/{op}\"><code>{op}</code></a></td>\
             <td title=\"{peer}\"><code>{peer_short}</code></td><td>{first}-{last}</td>\
             <td class=\"num\">{price}</td><td class=\"num\">{stake_btt}</td>\
             <td class=\"num\">{rep_pct}</td><td class=\"num\">{passed}</td><td class=\"num\">{failed}</td>\
             <td class=\"num\">{faults}</td><td class=\"num\">{slashed}</td><td class=\"{class}\">{status}</td></tr>",
            op = node.operator,
            stake = node.stake,
            rep = node.reputation_bps,
            peer = escape(&peer),
            peer_short = escape(&short(&peer)),
            first = node.first_block,
            last = node.last_block,
            price = node.price_per_token,
            stake_btt = escape(&format_tokens(node.stake)),
            rep_pct = percent(node.reputation_bps),
            passed = node.challenges_passed,
            failed = node.challenges_failed,
            faults = node.faults,
            slashed = escape(&format_tokens(node.total_slashed)),
            status = escape(&status),
        );
    }
    body.push_str("</tbody></table></section>");
    body.push_str(&reputation_bars(nodes));
    body.push_str(&validators_section(validators));
    body.push_str(&super::payments::section(payments));
    layout("InferGrid network", &subtitle, auditor.block(), &body)
}

/// The validators, by stake: their weight in every quorum.
fn validators_section(validators: &[ValidatorAudit]) -> String {
    let mut out = String::from(
        "<section id=\"validators\"><h2>Validators</h2><table><thead><tr><th>validator</th>\
         <th class=\"num\">stake</th><th class=\"num\">unbonding</th>\
         <th class=\"num\">missed reveals</th><th class=\"num\">dissents</th>\
         <th class=\"num\">penalized</th><th>status</th></tr></thead><tbody>",
    );
    if validators.is_empty() {
        out.push_str("<tr><td class=\"muted\" colspan=\"7\">no validator registered</td></tr>");
    }
    for v in validators {
        let (class, status) = if v.active { ("ok", "active") } else { ("bad", "inactive") };
        let _ = write!(
            out,
            "<tr class=\"validator\" data-validator=\"{addr}\" data-validator-stake-wei=\"{}\">\
             <td><code>{addr}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"{class}\">{status}</td></tr>",
            v.stake,
            escape(&format_tokens(v.stake)),
            escape(&format_tokens(v.unbonding)),
            v.missed_reveals,
            v.dissents,
            escape(&format_tokens(v.total_penalized)),
            addr = v.validator,
        );
    }
    out.push_str("</tbody></table></section>");
    out
}

/// The gateway's live view: servable or not, the last request's route, recent failovers and
/// what it owes each node.
fn gateway_section(gateway: &GatewayView) -> String {
    let mut out = String::from("<section id=\"gateway\"><h2>This gateway</h2>");
    if gateway.unserved.is_empty() {
        out.push_str("<p class=\"ok\">every block is servable</p>");
    } else {
        let blocks: Vec<String> = gateway.unserved.iter().map(u16::to_string).collect();
        let _ = write!(
            out,
            "<p class=\"bad\">unservable: no usable peer for block(s) {}</p>",
            blocks.join(", ")
        );
    }
    let route = &gateway.report.route;
    if route.is_empty() {
        out.push_str("<p class=\"muted\">no request routed yet</p>");
    } else {
        out.push_str("<p>route of the last step: ");
        let hops: Vec<String> = route
            .iter()
            .map(|h| {
                format!(
                    "<span class=\"hop\" data-peer=\"{peer}\">blocks {}-{} on <code>{}</code></span>",
                    h.first_block,
                    h.last_block,
                    escape(&short(&h.peer.to_string())),
                    peer = h.peer
                )
            })
            .collect();
        out.push_str(&hops.join(" → "));
        out.push_str("</p>");
    }
    let _ = write!(
        out,
        "<p>{} failovers so far, {} peers banned now</p>",
        gateway.report.failovers_total, gateway.banned
    );
    if !gateway.report.payments.is_empty() {
        out.push_str("<table><thead><tr><th>operator</th><th class=\"num\">channel</th>\
            <th class=\"num\">block-tokens</th><th class=\"num\">owed</th><th class=\"num\">signed</th>\
            </tr></thead><tbody>");
        for tab in &gateway.report.payments {
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{} wei</td><td class=\"num\">{} wei</td></tr>",
                tab.operator, tab.channel, tab.metered, tab.owed, tab.signed
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
    out
}

/// Each operator's reputation as a horizontal bar, 0-100%.
fn reputation_bars(nodes: &[NodeAudit]) -> String {
    let (row, label, width) = (22, 136, 420);
    let height = row * nodes.len().max(1) + 8;
    let mut svg = format!(
        "<section><h2>Reputation</h2><svg role=\"img\" aria-label=\"reputation per operator\" \
         width=\"{}\" height=\"{height}\" viewBox=\"0 0 {} {height}\">",
        label + width + 60,
        label + width + 60
    );
    for (i, node) in nodes.iter().enumerate() {
        let y = i * row + 4;
        let bar = (width as f64 * f64::from(node.reputation_bps.min(10_000)) / 10_000.0).round();
        let colour = if node.active && !node.jailed { "#2f855a" } else { "#c53030" };
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text>\
             <rect x=\"{label}\" y=\"{y}\" width=\"{width}\" height=\"16\" fill=\"#edf2f7\"/>\
             <rect x=\"{label}\" y=\"{y}\" width=\"{bar}\" height=\"16\" fill=\"{colour}\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>",
            y + 12,
            escape(&short(&node.operator.to_string())),
            label + width + 6,
            y + 12,
            percent(node.reputation_bps)
        );
    }
    svg.push_str("</svg></section>");
    svg
}

/// A node's page: its figures, its reputation after every finalized epoch, its history.
pub fn node_page(deployment: &Deployment, node: &NodeAudit, history: &[HistoryEvent]) -> String {
    let subtitle = format!(
        "chain {} · as of block {}, {}",
        deployment.chain_id,
        node.as_of_block,
        utc(node.as_of_time)
    );
    let (class, status) = standing(node);
    let mut body = format!(
        "<p><a href=\"/dashboard\">← all operators</a></p><section><h2>Node</h2><table>\
         <tr><th>peer</th><td><code>{}</code></td></tr>\
         <tr><th>model</th><td><code>{}</code></td></tr>\
         <tr><th>blocks</th><td>{}-{}</td></tr>\
         <tr><th>price</th><td>{} wei per token</td></tr>\
         <tr><th>multiaddrs</th><td>{}</td></tr>\
         <tr><th>stake</th><td data-stake-wei=\"{}\">{}</td></tr>\
         <tr><th>unbonding</th><td>{}</td></tr>\
         <tr><th>reputation</th><td data-reputation-bps=\"{}\">{} over {} scored epochs</td></tr>\
         <tr><th>challenges</th><td>{} passed, {} failed</td></tr>\
         <tr><th>faults</th><td>{} (slashed {})</td></tr>\
         <tr><th>status</th><td class=\"{class}\">{}</td></tr></table></section>",
        escape(&peer_id_text(&node.peer_id)),
        node.model_id,
        node.first_block,
        node.last_block,
        node.price_per_token,
        escape(&node.multiaddrs.join(", ")),
        node.stake,
        escape(&format_tokens(node.stake)),
        escape(&format_tokens(node.unbonding)),
        node.reputation_bps,
        percent(node.reputation_bps),
        node.epochs_scored,
        node.challenges_passed,
        node.challenges_failed,
        node.faults,
        escape(&format_tokens(node.total_slashed)),
        escape(&status),
    );
    let mut reputation: Vec<(u64, u32)> = history
        .iter()
        .filter_map(|h| match &h.event {
            NodeEvent::ResultFinalized(e) => Some((e.epoch, e.newReputationBps)),
            _ => None,
        })
        .collect();
    // Epochs may finalize out of order; the chart runs in epoch order.
    reputation.sort_by_key(|(epoch, _)| *epoch);
    body.push_str(&reputation_chart(&reputation));
    body.push_str(
        "<section><h2>History</h2><table><thead><tr><th class=\"num\">block</th><th>event</th>\
        <th>details</th></tr></thead><tbody>",
    );
    for h in history {
        let details: Vec<String> = h
            .event
            .fields()
            .iter()
            .map(|(name, value)| match value {
                Value::Time(t) => format!("{name} {}", utc(*t)),
                v => format!("{name} {v}"),
            })
            .collect();
        let _ = write!(
            body,
            "<tr><td class=\"num\">{}</td><td>{}.{}</td><td>{}</td></tr>",
            h.block,
            h.event.contract(),
            h.event.name(),
            escape(&details.join(", "))
        );
    }
    body.push_str("</tbody></table></section>");
    layout(&format!("Operator {}", node.operator), &subtitle, node.as_of_block, &body)
}

/// Reputation after each finalized epoch, as a line over 0-100%.
fn reputation_chart(points: &[(u64, u32)]) -> String {
    let mut out = String::from("<section><h2>Reputation by epoch</h2>");
    if points.is_empty() {
        out.push_str("<p class=\"muted\">no epoch finalized for this node yet</p></section>");
        return out;
    }
    let (width, height, pad) = (640.0, 180.0, 30.0);
    let first = points[0].0 as f64;
    let span = (points[points.len() - 1].0 as f64 - first).max(1.0);
    let xy = |(epoch, bps): &(u64, u32)| {
        let x = pad + (*epoch as f64 - first) / span * (width - 2.0 * pad);
        let y = height - pad - f64::from(*bps.min(&10_000)) / 10_000.0 * (height - 2.0 * pad);
        (x, y)
    };
    let line: Vec<String> = points
        .iter()
        .map(|p| {
            let (x, y) = xy(p);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let _ = write!(
        out,
        "<svg role=\"img\" aria-label=\"reputation by epoch\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\"><line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#a0aec0\"/>\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"#a0aec0\"/>\
         <text x=\"2\" y=\"{top}\" font-size=\"11\">100%</text><text x=\"8\" y=\"{b}\" font-size=\"11\">0%</text>\
         <polyline fill=\"none\" stroke=\"#1a56db\" stroke-width=\"2\" points=\"{}\"/>",
        line.join(" "),
        b = height - pad,
        r = width - pad,
        top = pad + 4.0,
    );
    for p in points {
        let (x, y) = xy(p);
        let _ = write!(
            out,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"#1a56db\"><title>epoch {}: {}</title></circle>",
            p.0,
            percent(p.1)
        );
    }
    let _ = write!(
        out,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"11\">epoch {}</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">epoch {}</text></svg></section>",
        height - 8.0,
        points[0].0,
        width - pad,
        height - 8.0,
        points[points.len() - 1].0
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_chain_cannot_become_markup() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn long_ids_are_shortened_by_characters() {
        assert_eq!(short("0x70997970C51812dc3A010C7d01b50e0d17dc79C8"), "0x709979…dc79C8");
        assert_eq!(short(&"é".repeat(20)), format!("{}…{}", "é".repeat(8), "é".repeat(6)));
        assert_eq!(short("short"), "short");
    }

    #[test]
    fn the_reputation_chart_spans_its_epochs() {
        let svg = reputation_chart(&[(3, 10_000), (4, 5_000), (6, 0)]);
        assert!(svg.contains("points=\"30.0,30.0 223.3,90.0 610.0,150.0\""), "{svg}");
        assert!(svg.contains("<title>epoch 4: 50.0%</title>"), "{svg}");
        assert!(reputation_chart(&[]).contains("no epoch finalized"));
    }
}
