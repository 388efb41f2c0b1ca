//! Organizations over HTTP (issue 11, seed 003): CRUD, their users, quota top-ups, users in an
//! organization (unlimited by default), and deleting users and organizations.

use pg_quota_e2e::*;

fn org_path(org_id: &str) -> String {
    format!("/api/admin/organizations/{org_id}")
}

/// Finds an organization in the list, page by page.
async fn listed_org(ctx: &Ctx, org_id: &str) -> Option<Value> {
    let mut offset = 0;
    loop {
        let page = ctx
            .api
            .admin(Method::GET, "/api/admin/organizations")
            .query(&[("limit", "1000".into()), ("offset", offset.to_string())])
            .send()
            .await
            .expect(200);
        assert_fields(&page, &["organizations", "total", "limit", "offset"]);
        let orgs = page["organizations"]
            .as_array()
            .expect("organizations array");
        if let Some(found) = orgs.iter().find(|o| o["id"] == org_id) {
            return Some(found.clone());
        }
        if orgs.is_empty() {
            return None;
        }
        offset += orgs.len();
    }
}

#[tokio::test]
async fn organization_crud_over_http() {
    let ctx = Ctx::new("org_crud").await;
    let id = ctx.id("org");
    let created = ctx
        .api
        .admin(Method::POST, "/api/admin/organizations")
        .json(&json!({
            "id": id, "name": "Acme Inc", "billing_type": "postpaid",
            "quota": 5000, "overdraft_limit": 1000
        }))
        .send()
        .await
        .expect(201);
    assert_exact_keys(&created, ORGANIZATION_KEYS);
    assert_eq!(created["id"], id.as_str());
    assert_eq!(created["name"], "Acme Inc");
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["billing_type"], "postpaid");
    assert_eq!(int(&created, "quota"), 5000);
    assert_eq!(int(&created, "used_quota"), 0);
    assert_eq!(int(&created, "held_quota"), 0);
    assert_eq!(int(&created, "overdraft_limit"), 1000);
    // postpaid: quota + overdraft_limit - used_quota - held_quota.
    assert_eq!(int(&created, "available_quota"), 6000);
    assert_eq!(int(&created, "users_count"), 0);
    assert_eq!(int(&created, "open_reservations"), 0);

    // Defaults, and org_id as a synonym of id.
    let other = ctx.id("org");
    let defaults = ctx
        .api
        .admin(Method::POST, "/api/admin/organizations")
        .json(&json!({ "org_id": other }))
        .send()
        .await
        .expect(201);
    assert_eq!(defaults["id"], other.as_str());
    assert_eq!(defaults["name"], other.as_str(), "name defaults to the id");
    assert_eq!(defaults["status"], "enabled");
    assert_eq!(defaults["billing_type"], "prepaid");
    assert_eq!(int(&defaults, "quota"), 0);
    assert_eq!(int(&defaults, "overdraft_limit"), 0);
    assert_eq!(int(&defaults, "available_quota"), 0);

    // Get, list.
    let got = ctx.org(&id).await;
    assert_eq!(got, created);
    let listed = listed_org(&ctx, &id)
        .await
        .expect("the organization is listed");
    assert_eq!(listed, created);

    // Update: partial; quota sets the quota (an adjustment in the organization's ledger).
    let updated = ctx
        .api
        .admin(Method::PUT, &org_path(&id))
        .json(&json!({"name": "Acme Corp", "overdraft_limit": 0, "quota": 7000}))
        .send()
        .await
        .expect(200);
    assert_eq!(updated["name"], "Acme Corp");
    assert_eq!(updated["billing_type"], "postpaid");
    assert_eq!(int(&updated, "quota"), 7000);
    assert_eq!(int(&updated, "overdraft_limit"), 0);
    assert_eq!(int(&updated, "available_quota"), 7000);
    assert_eq!(updated["created_at"], created["created_at"]);
    let prepaid = ctx
        .api
        .admin(Method::PUT, &org_path(&id))
        .json(&json!({"billing_type": "prepaid", "status": "disabled"}))
        .send()
        .await
        .expect(200);
    assert_eq!(prepaid["billing_type"], "prepaid");
    assert_eq!(prepaid["status"], "disabled");
    assert_eq!(ctx.org(&id).await, prepaid);

    // Duplicate id: 409.
    ctx.api
        .admin(Method::POST, "/api/admin/organizations")
        .json(&json!({ "id": id }))
        .send()
        .await
        .expect_error(409, Some("duplicate"));

    // Delete: the organization, then 404.
    let deleted = ctx
        .api
        .admin(Method::DELETE, &org_path(&other))
        .send()
        .await
        .expect(200);
    assert_eq!(deleted["deleted"], true, "{deleted}");
    assert_eq!(deleted["organization"]["id"], other.as_str(), "{deleted}");
    ctx.api
        .admin(Method::GET, &org_path(&other))
        .send()
        .await
        .expect_error(404, Some("not_found"));
    assert!(listed_org(&ctx, &other).await.is_none());
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn unknown_organization_is_404_everywhere() {
    let ctx = Ctx::new("org_unknown").await;
    let ghost = ctx.id("ghost");
    let path = org_path(&ghost);
    ctx.api
        .admin(Method::GET, &path)
        .send()
        .await
        .expect_error(404, Some("not_found"));
    ctx.api
        .admin(Method::PUT, &path)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect_error(404, Some("not_found"));
    ctx.api
        .admin(Method::DELETE, &path)
        .send()
        .await
        .expect_error(404, Some("not_found"));
    ctx.api
        .admin(Method::GET, &format!("{path}/users"))
        .send()
        .await
        .expect_error(404, Some("not_found"));
    ctx.api
        .admin(Method::POST, &format!("{path}/quota"))
        .json(&json!({"credits": 10, "operation_id": ctx.id("q")}))
        .send()
        .await
        .expect_error(404, Some("not_found"));
    // Nothing was created by any of these.
    ctx.api
        .admin(Method::GET, &path)
        .send()
        .await
        .expect_error(404, None);
}

#[tokio::test]
async fn invalid_organization_input_is_400_and_writes_nothing() {
    let ctx = Ctx::new("org_invalid").await;
    let id = ctx.id("org");
    for extra in [
        json!({"billing_type": "weekly"}),
        json!({"status": "paused"}),
        json!({"quota": -1}),
        json!({"overdraft_limit": -5}),
        json!({"no_such_key": 1}),
        json!({"quota": "lots"}),
        json!({"name": ""}),
    ] {
        let mut body = json!({ "id": id });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        ctx.api
            .admin(Method::POST, "/api/admin/organizations")
            .json(&body)
            .send()
            .await
            .expect_error(400, None);
    }
    for bad_id in [json!(""), json!(format!("{id} ")), json!(7)] {
        ctx.api
            .admin(Method::POST, "/api/admin/organizations")
            .json(&json!({ "id": bad_id }))
            .send()
            .await
            .expect_error(400, None);
    }
    // id and org_id together, or none at all: the sidecar refuses the shape.
    ctx.api
        .admin(Method::POST, "/api/admin/organizations")
        .json(&json!({ "id": id, "org_id": id }))
        .send()
        .await
        .expect_error(400, Some("invalid_body"));
    ctx.api
        .admin(Method::POST, "/api/admin/organizations")
        .json(&json!({ "name": "no id" }))
        .send()
        .await
        .expect_error(400, Some("invalid_body"));
    ctx.api
        .admin(Method::GET, &org_path(&id))
        .send()
        .await
        .expect_error(404, None);

    // The same checks on update; the organization is unchanged.
    let org = ctx.create_org(json!({"quota": 100})).await;
    let before = ctx.org(&org).await;
    for patch in [
        json!({"billing_type": "weekly"}),
        json!({"status": "paused"}),
        json!({"quota": -1}),
        json!({"overdraft_limit": -1}),
        json!({"no_such_key": 1}),
    ] {
        ctx.api
            .admin(Method::PUT, &org_path(&org))
            .json(&patch)
            .send()
            .await
            .expect_error(400, None);
    }
    for bad in [
        json!({"credits": 0, "operation_id": ctx.id("q")}),
        json!({"credits": -10, "operation_id": ctx.id("q")}),
        json!({"credits": 10, "operation_id": ""}),
        json!({"credits": 10, "operation_id": " padded"}),
        json!({"credits": 10}),
        json!({"credits": 10, "operation_id": ctx.id("q"), "extra": true}),
    ] {
        ctx.api
            .admin(Method::POST, &format!("{}/quota", org_path(&org)))
            .json(&bad)
            .send()
            .await
            .expect_error(400, None);
    }
    assert_eq!(ctx.org(&org).await, before);
    // Listing bounds.
    for limit in ["0", "1001"] {
        ctx.api
            .admin(Method::GET, "/api/admin/organizations")
            .query(&[("limit", limit.into())])
            .send()
            .await
            .expect_error(400, None);
    }
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn organization_quota_top_up_is_idempotent() {
    let ctx = Ctx::new("org_topup").await;
    let org = ctx.create_org(json!({"quota": 100})).await;
    let path = format!("{}/quota", org_path(&org));
    let op = ctx.id("q");
    let body = json!({"credits": 250, "operation_id": op, "description": "March"});
    let first = ctx
        .api
        .admin(Method::POST, &path)
        .json(&body)
        .send()
        .await
        .expect(200);
    assert_fields(
        &first,
        &[
            "org_id",
            "operation_id",
            "credits",
            "quota_after",
            "used_quota_after",
            "held_quota_after",
            "entry_id",
        ],
    );
    assert_eq!(first["org_id"], org.as_str());
    assert_eq!(first["operation_id"], op.as_str());
    assert_eq!(int(&first, "credits"), 250);
    assert_eq!(int(&first, "quota_after"), 350);
    // The replay: the same answer, applied once.
    let replay = ctx
        .api
        .admin(Method::POST, &path)
        .json(&body)
        .send()
        .await
        .expect(200);
    assert_eq!(replay, first);
    assert_eq!(int(&ctx.org(&org).await, "quota"), 350);
    // The same operation id with other parameters: 409, nothing applied.
    let conflict = ctx
        .api
        .admin(Method::POST, &path)
        .json(&json!({"credits": 999, "operation_id": op}))
        .send()
        .await
        .expect_error(409, Some("idempotency_conflict"));
    assert_eq!(conflict["operation_id"], op.as_str(), "{conflict}");
    assert_eq!(int(&ctx.org(&org).await, "quota"), 350);
    // A new id adds again.
    let second = ctx.add_org_quota(&org, 50).await;
    assert_eq!(int(&second, "quota_after"), 400);
    assert_ne!(second["entry_id"], first["entry_id"]);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn users_in_an_organization_are_unlimited_by_default() {
    let ctx = Ctx::new("org_users").await;
    let org = ctx.create_org(json!({"quota": 1000})).await;
    let inside = ctx.create_user_with(Some(&org), json!({})).await;
    assert_eq!(inside["org"], org.as_str());
    assert_eq!(inside["unlimited"], true, "{inside}");
    assert_eq!(int(&inside, "used_quota"), 0);
    assert_eq!(int(&inside, "request_count"), 0);
    assert_eq!(int(&inside, "held_credits"), 0);
    let outside = ctx.create_user_with(None, json!({})).await;
    assert!(outside["org"].is_null());
    assert_eq!(outside["unlimited"], false, "{outside}");
    let limited = ctx
        .create_user_with(Some(&org), json!({"unlimited": false}))
        .await;
    assert_eq!(
        limited["unlimited"], false,
        "explicit unlimited false: {limited}"
    );
    let unlimited_alone = ctx.create_user_with(None, json!({"unlimited": true})).await;
    assert_eq!(unlimited_alone["unlimited"], true);
    // A read shows what the create answered.
    let inside_id = inside["id"].as_str().unwrap();
    assert_eq!(ctx.user_json(inside_id).await, inside);

    // The organization's users, with their unlimited flag ("无限额度" label of seed 003).
    let listing = ctx
        .api
        .admin(Method::GET, &format!("{}/users", org_path(&org)))
        .send()
        .await
        .expect(200);
    assert_fields(&listing, &["users", "total", "limit", "offset"]);
    assert_eq!(int(&listing, "total"), 2, "{listing}");
    let users = listing["users"].as_array().unwrap();
    let flag = |id: &Value| {
        users
            .iter()
            .find(|u| u["id"] == *id)
            .unwrap_or_else(|| panic!("{id} in {listing}"))["unlimited"]
            .clone()
    };
    assert_eq!(flag(&inside["id"]), true);
    assert_eq!(flag(&limited["id"]), false);
    for user in users {
        assert_fields(
            user,
            &["unlimited", "used_quota", "request_count", "balance"],
        );
    }
    let paged = ctx
        .api
        .admin(Method::GET, &format!("{}/users", org_path(&org)))
        .query(&[("limit", "1".into()), ("offset", "1".into())])
        .send()
        .await
        .expect(200);
    assert_eq!(paged["users"].as_array().unwrap().len(), 1, "{paged}");
    assert_eq!(int(&paged, "total"), 2);
    assert_eq!(int(&ctx.org(&org).await, "users_count"), 2);
    // The general user list carries the flag for every user too.
    let page = ctx
        .api
        .admin(Method::GET, "/api/admin/users")
        .send()
        .await
        .expect(200);
    for user in page["users"].as_array().unwrap() {
        assert!(user["unlimited"].is_boolean(), "{user}");
    }

    // Moving users: into an organization keeps the flag unless the patch sets it; out of it too.
    let moved = ctx
        .update_user(outside["id"].as_str().unwrap(), json!({"org": org}))
        .await;
    assert_eq!(moved["org"], org.as_str());
    assert_eq!(moved["unlimited"], false, "{moved}");
    let switched = ctx
        .update_user(
            outside["id"].as_str().unwrap(),
            json!({"unlimited": true, "org": null}),
        )
        .await;
    assert!(switched["org"].is_null());
    assert_eq!(switched["unlimited"], true);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn user_in_an_unknown_organization_is_404_and_writes_nothing() {
    let ctx = Ctx::new("org_user_unknown").await;
    let ghost = ctx.id("ghostorg");
    let id = ctx.id("u");
    let refused = ctx
        .api
        .admin(Method::POST, "/api/admin/users")
        .json(&json!({"id": id, "org": ghost}))
        .send()
        .await
        .expect_error(404, Some("not_found"));
    assert_eq!(refused["field"], "org", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains(&ghost),
        "the message names the organization: {refused}"
    );
    ctx.api
        .admin(Method::GET, &format!("/api/admin/users/{id}"))
        .send()
        .await
        .expect_error(404, None);
    let wallets: i64 = ctx
        .db
        .query_one(
            "SELECT count(*) FROM quota.wallets WHERE user_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wallets, 0);

    // An update into an unknown organization: 404, the user unchanged.
    let user = ctx.create_user_with(None, json!({})).await;
    let user_id = user["id"].as_str().unwrap();
    let refused = ctx
        .api
        .admin(Method::PUT, &format!("/api/admin/users/{user_id}"))
        .json(&json!({"org": ghost, "unlimited": true}))
        .send()
        .await
        .expect_error(404, Some("not_found"));
    assert!(refused["message"].as_str().unwrap().contains(&ghost));
    assert_eq!(ctx.user_json(user_id).await, user);

    // An import naming one: all or nothing.
    let (a, b) = (ctx.id("imp"), ctx.id("imp"));
    ctx.api
        .admin(Method::POST, "/api/admin/users/import")
        .json(&json!([{"id": a}, {"id": b, "org": ghost}]))
        .send()
        .await
        .expect_error(404, Some("not_found"));
    for id in [&a, &b] {
        ctx.api
            .admin(Method::GET, &format!("/api/admin/users/{id}"))
            .send()
            .await
            .expect_error(404, None);
    }
    // An import into an existing organization: unlimited by default there, as on create.
    let org = ctx.create_org(json!({})).await;
    let (c, d) = (ctx.id("imp"), ctx.id("imp"));
    ctx.api
        .admin(Method::POST, "/api/admin/users/import")
        .json(&json!({"users": [{"id": c, "org": org}, {"id": d, "org": org, "unlimited": false}]}))
        .send()
        .await
        .expect(200);
    assert_eq!(ctx.user_json(&c).await["unlimited"], true);
    assert_eq!(ctx.user_json(&d).await["unlimited"], false);
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn delete_organization_is_refused_while_it_has_users_or_holds() {
    let ctx = Ctx::new("org_delete").await;
    let org = ctx.create_org(json!({"quota": 1000})).await;
    let user = ctx.create_user_with(Some(&org), json!({})).await;
    let user_id = user["id"].as_str().unwrap().to_string();
    let hold = ctx.hold(&user_id, 100).await;
    let reservation_id = int(&hold, "reservation_id");

    // Users: 409 in_use, nothing deleted.
    ctx.api
        .admin(Method::DELETE, &org_path(&org))
        .send()
        .await
        .expect_error(409, Some("in_use"));
    // The user leaves; the hold made in the organization is still open: 409 again.
    ctx.update_user(&user_id, json!({"org": null})).await;
    let with_hold = ctx.org(&org).await;
    assert_eq!(int(&with_hold, "users_count"), 0);
    assert_eq!(int(&with_hold, "open_reservations"), 1);
    assert_eq!(int(&with_hold, "held_quota"), 100);
    ctx.api
        .admin(Method::DELETE, &org_path(&org))
        .send()
        .await
        .expect_error(409, Some("in_use"));
    assert_eq!(ctx.org(&org).await, with_hold);
    // Released, the organization can go.
    ctx.release(reservation_id, &ctx.id("rel"))
        .await
        .expect(200);
    let deleted = ctx
        .api
        .admin(Method::DELETE, &org_path(&org))
        .send()
        .await
        .expect(200);
    assert_eq!(deleted["deleted"], true);
    ctx.api
        .admin(Method::GET, &org_path(&org))
        .send()
        .await
        .expect_error(404, None);
    // The reservation keeps its record.
    let record = ctx.reservation(reservation_id).await.expect(200);
    assert_eq!(record["status"], "released");
    ctx.assert_verify_clean().await;
}

#[tokio::test]
async fn delete_user_is_refused_while_a_hold_is_open() {
    let ctx = Ctx::new("user_delete").await;
    let org = ctx.create_org(json!({"quota": 1000})).await;
    let user = ctx
        .create_user_with(Some(&org), json!({"unlimited": false}))
        .await;
    let user_id = user["id"].as_str().unwrap().to_string();
    ctx.top_up_credits(&user_id, 500).await;
    let settled = ctx.hold(&user_id, 100).await;
    ctx.settle(int(&settled, "reservation_id"), 40, &ctx.id("set"))
        .await
        .expect(200);
    let hold = ctx.hold(&user_id, 100).await;
    let path = format!("/api/admin/users/{user_id}");

    let before = ctx.money_state(&user_id, Some(&org)).await;
    let refused = ctx
        .api
        .admin(Method::DELETE, &path)
        .send()
        .await
        .expect_error(409, Some("in_use"));
    assert!(refused["message"].is_string());
    assert_eq!(ctx.money_state(&user_id, Some(&org)).await, before);

    ctx.release(int(&hold, "reservation_id"), &ctx.id("rel"))
        .await
        .expect(200);
    let deleted = ctx
        .api
        .admin(Method::DELETE, &path)
        .send()
        .await
        .expect(200);
    assert_eq!(deleted["deleted"], true, "{deleted}");
    assert_eq!(deleted["user"]["id"], user_id.as_str(), "{deleted}");
    ctx.api
        .admin(Method::GET, &path)
        .send()
        .await
        .expect_error(404, Some("not_found"));
    ctx.api
        .admin(Method::DELETE, &path)
        .send()
        .await
        .expect_error(404, Some("not_found"));
    // Its wallet and ledger went with it; what the organization spent stays spent.
    let rows: i64 = ctx
        .db
        .query_one(
            "SELECT (SELECT count(*) FROM quota.wallets WHERE user_id = $1)
                  + (SELECT count(*) FROM quota.ledger WHERE user_id = $1)",
            &[&user_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    let org_after = ctx.org(&org).await;
    assert_eq!(int(&org_after, "users_count"), 0);
    assert_eq!(int(&org_after, "held_quota"), 0);
    assert_eq!(int(&org_after, "quota"), 960, "{org_after}");
    // The audit log keeps the history.
    assert!(ctx.audit_rows_mentioning(&user_id).await > 0);
    // The organization is now empty and can be deleted.
    ctx.api
        .admin(Method::DELETE, &org_path(&org))
        .send()
        .await
        .expect(200);
    ctx.assert_verify_clean().await;
}
