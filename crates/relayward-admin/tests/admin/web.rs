//! The web admin center as served: the shell and its files with their security headers, no
//! inline script anywhere, every module it imports served, and every API path it calls a route
//! of the API. (Its behaviour in a browser is tested by crates/relayward/tests/web.rs.)

use std::collections::BTreeSet;

use reqwest::Method;

use crate::common::{Api, Resp};

fn assert_hardened(r: &Resp, what: &str) {
    let csp = r
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no Content-Security-Policy"));
    let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
    for wanted in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'none'",
        "base-uri 'none'",
    ] {
        assert!(
            directives.contains(&wanted),
            "{what}: CSP {csp:?} lacks {wanted}"
        );
    }
    assert!(
        !csp.contains("unsafe-") && !csp.contains("data:") && !csp.contains("http"),
        "{what}: CSP {csp:?} allows more than this origin"
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{what}");
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
}

/// `/v1/...` paths in the scripts: string and template literals, each `${...}` a segment.
fn api_paths(js: &str) -> Vec<String> {
    let mut out = Vec::new();
    for quote in ['\'', '`'] {
        let open = format!("{quote}/v1/");
        let mut rest = js;
        while let Some(i) = rest.find(&open) {
            let lit = &rest[i + 1..];
            let end = lit.find(quote).expect("a closed literal");
            let mut path = lit[..end].to_string();
            // A template's `${...}` after a slash is one path segment (an id, an escaped
            // name); anywhere else it is a query string.
            while let Some(s) = path.find("${") {
                if !path[..s].ends_with('/') {
                    path.truncate(s);
                    break;
                }
                let e = s + path[s..].find('}').expect("a closed ${}");
                path.replace_range(s..=e, "*");
            }
            let path = path.split('?').next().unwrap().trim_end_matches('/');
            out.push(path.to_string());
            rest = &lit[end + 1..];
        }
    }
    out
}

/// Does `path` (segments `*` for variables) name a route of the API?
fn is_route(path: &str, routes: &BTreeSet<&'static str>) -> bool {
    let segs: Vec<&str> = path.split('/').collect();
    routes.iter().any(|route| {
        let r: Vec<&str> = route.split('/').collect();
        r.len() == segs.len()
            && r.iter()
                .zip(&segs)
                .all(|(r, s)| *s == "*" || r == s || (r.starts_with('{') && !s.is_empty()))
    })
}

#[tokio::test]
async fn the_shell_and_its_files_are_served_hardened_without_inline_script() {
    let api = Api::start().await;
    // The shell holds no data, so it needs no token.
    let index = api.send(Method::GET, "/", None, None).await;
    assert_eq!(index.status, 200, "{}", index.text);
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_hardened(&index, "/");
    let html = index.text.to_ascii_lowercase();
    // Scripts only by src, no inline handlers or styles, nothing from elsewhere.
    for (i, _) in html.match_indices("<script") {
        let tag = &html[i..i + html[i..].find('>').unwrap()];
        assert!(tag.contains(" src=\"/assets/"), "inline script: {tag}");
        assert!(
            html[i..].starts_with(&format!("{tag}></script>")),
            "script with a body: {tag}"
        );
    }
    assert!(!html.contains("<style"), "inline style element");
    assert!(!html.contains(" style="), "inline style attribute");
    assert!(
        !html.contains(" onclick=") && !html.contains(" onload=") && !html.contains("javascript:"),
        "inline handler"
    );
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"));

    let routes: BTreeSet<&'static str> = relayward_admin::routes()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let names: BTreeSet<&str> = relayward_admin::web::asset_names().collect();
    let mut called = BTreeSet::new();
    for name in relayward_admin::web::asset_names() {
        let r = api
            .send(Method::GET, &format!("/assets/{name}"), None, None)
            .await;
        assert_eq!(r.status, 200, "{name}");
        assert_hardened(&r, name);
        let ctype = r.header("content-type").unwrap();
        let want = match name.rsplit('.').next().unwrap() {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "svg" => "image/svg+xml",
            other => panic!("unexpected asset type {other}"),
        };
        assert_eq!(ctype, want, "{name}");
        assert!(
            html.contains(&format!("/assets/{name}")) || name.ends_with(".js"),
            "{name} is not linked"
        );
        // The SVG namespace is a name, not an address: anything else is.
        let own = r.text.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !own.contains("http://") && !own.contains("https://"),
            "{name} reaches elsewhere"
        );
        if !name.ends_with(".js") {
            continue;
        }
        let js = &r.text;
        // Text goes in as text: nothing a sender or a remote server wrote can become markup
        // or code.
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "setAttribute('style'",
            "localStorage",
            "document.cookie",
        ] {
            assert!(!js.contains(banned), "{name} uses {banned}");
        }
        // Every module it imports is served.
        for line in js.lines().filter(|l| l.starts_with("import ")) {
            let module = line
                .rsplit("from '")
                .next()
                .and_then(|s| s.strip_prefix("./"))
                .and_then(|s| s.split('\'').next())
                .unwrap_or_else(|| panic!("{name}: import {line:?}"));
            assert!(
                names.contains(module),
                "{name} imports {module}, which is not served"
            );
        }
        for path in api_paths(js) {
            assert!(
                is_route(&path, &routes),
                "{name} calls {path}, which is no route of the API"
            );
            called.insert(path);
        }
    }
    // The pages reach the whole tenant side of the API.
    for wanted in [
        "/v1/me",
        "/v1/tenants/*/status",
        "/v1/tenants/*/traffic",
        "/v1/tenants/*/domains",
        "/v1/tenants/*/connectors",
        "/v1/tenants/*/request-unblock",
        "/v1/tenants/*/unblock",
        "/v1/traffic",
        "/v1/trace",
        "/v1/audit",
        "/v1/queue",
        "/v1/tokens",
    ] {
        assert!(
            called.iter().any(|c| c == wanted
                || c.starts_with(&format!("{wanted}/"))
                || c.starts_with(&format!("{wanted}?"))),
            "no page calls {wanted}: {called:?}"
        );
    }

    // Not a file of the center: the API's own 404.
    for path in ["/assets/nothing.js", "/assets/../lib.rs", "/assets/"] {
        let r = api.send(Method::GET, path, None, None).await;
        r.assert_problem(404);
    }
    api.stop().await;
}
