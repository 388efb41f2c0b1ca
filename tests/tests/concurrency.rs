//! Concurrency (SPEC 1.1, 1.2): many connections charging and adding against a few users with tight
//! balances, with duplicated operation ids (some in flight at the same time on different
//! connections). No balance goes below zero, each operation applies once, replays are identical,
//! and `quota.verify()` is clean.

use std::collections::HashMap;
use std::time::Duration;

use pg_quota_e2e::*;

const CONNECTIONS: usize = 16;
const OPS_PER_CONNECTION: usize = 250;
const USERS: usize = 3;
const INITIAL_CREDITS: i64 = 300;

/// xorshift64*: deterministic given the seed, printed on failure.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Debug)]
enum Kind {
    Charge,
    Add,
}

#[derive(Clone, Debug)]
struct Op {
    kind: Kind,
    user: usize,
    amount_usd: f64,
    operation_id: String,
}

#[derive(Debug)]
enum Outcome {
    /// The row returned, as JSON text, and the credit delta it reports.
    Applied {
        json: String,
        user: usize,
        delta: i64,
    },
    Insufficient,
}

/// Runs one SQL money call, retrying 40001 (the same operation_id in flight elsewhere).
async fn run_sql(db: &tokio_postgres::Client, users: &[String], op: &Op) -> (Outcome, u32) {
    let sql = match op.kind {
        Kind::Charge => {
            "SELECT to_jsonb(r)::text, (-r.credits_charged)::bigint FROM quota.charge($1, $2, $3) r"
        }
        Kind::Add => {
            "SELECT to_jsonb(r)::text, r.credits_added::bigint FROM quota.add($1, $2, $3) r"
        }
    };
    let mut retries = 0;
    loop {
        match db
            .query_one(sql, &[&users[op.user], &op.amount_usd, &op.operation_id])
            .await
        {
            Ok(row) => {
                return (
                    Outcome::Applied {
                        json: row.get(0),
                        user: op.user,
                        delta: row.get(1),
                    },
                    retries,
                )
            }
            Err(e) => match sqlstate(&e).as_str() {
                "23514" => return (Outcome::Insufficient, retries),
                "40001" if retries < 200 => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(1 + (retries as u64 % 5))).await;
                }
                _ => panic!("{op:?}: unexpected error {e:?}"),
            },
        }
    }
}

/// Per-connection op lists: unique ops, then ~10% of slots replaced by a copy of an op at the same
/// index on another connection (concurrent duplicates) and ~3% by a copy of an earlier op (replay
/// after completion).
fn plan_ops(
    rng: &mut Rng,
    prefix: &str,
    connections: usize,
    per_connection: usize,
    users: usize,
) -> Vec<Vec<Op>> {
    let mut ops: Vec<Vec<Op>> = (0..connections)
        .map(|c| {
            (0..per_connection)
                .map(|i| {
                    let charge = rng.chance(80);
                    Op {
                        kind: if charge { Kind::Charge } else { Kind::Add },
                        user: rng.below(users as u64) as usize,
                        // charges 5..50 credits, adds 30..130 credits at rate 1: supply about
                        // matches demand, so wallets hover near zero
                        amount_usd: if charge {
                            (5 + rng.below(46)) as f64 / 10_000.0
                        } else {
                            (30 + rng.below(101)) as f64 / 10_000.0
                        },
                        operation_id: format!("{prefix}_{c}_{i}"),
                    }
                })
                .collect()
        })
        .collect();
    let mut original = vec![vec![true; per_connection]; connections];
    for i in 0..per_connection {
        for c in 0..connections {
            let other = (c + 1 + rng.below(connections as u64 - 1) as usize) % connections;
            if rng.chance(10) && original[other][i] {
                ops[c][i] = ops[other][i].clone();
                original[c][i] = false;
            } else if i > 0 && rng.chance(3) {
                let j = rng.below(i as u64) as usize;
                if original[other][j] {
                    ops[c][i] = ops[other][j].clone();
                    original[c][i] = false;
                }
            }
        }
    }
    ops
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t | 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sql_charges_and_adds_keep_the_ledger_exact() {
    let ctx = Ctx::new("conc_sql").await;
    let seed = seed();
    let mut rng = Rng(seed);
    let mut users = vec![];
    for _ in 0..USERS {
        let u = ctx.id("u");
        ctx.db
            .query("SELECT quota.create_user($1)", &[&u])
            .await
            .expect("create_user");
        ctx.db
            .query(
                "SELECT * FROM quota.bonus($1, $2, $3)",
                &[&u, &INITIAL_CREDITS, &ctx.id("seed")],
            )
            .await
            .expect("bonus");
        users.push(u);
    }
    let prefix = ctx.id("op");
    let ops = plan_ops(&mut rng, &prefix, CONNECTIONS, OPS_PER_CONNECTION, USERS);

    let mut tasks = tokio::task::JoinSet::new();
    for list in ops.clone() {
        let users = users.clone();
        tasks.spawn(async move {
            let db = connect_db().await;
            let mut out = vec![];
            let mut retries = 0;
            for op in list {
                let (outcome, r) = run_sql(&db, &users, &op).await;
                retries += r;
                out.push((op.operation_id.clone(), outcome));
            }
            (out, retries)
        });
    }
    let mut outcomes: HashMap<String, Vec<Outcome>> = HashMap::new();
    let mut total_retries = 0;
    while let Some(done) = tasks.join_next().await {
        let (out, retries) = done.expect("worker task");
        total_retries += retries;
        for (id, o) in out {
            outcomes.entry(id).or_default().push(o);
        }
    }
    let calls: usize = outcomes.values().map(Vec::len).sum();
    assert_eq!(calls, CONNECTIONS * OPS_PER_CONNECTION);
    let duplicated = outcomes.values().filter(|v| v.len() > 1).count();
    assert!(
        duplicated >= CONNECTIONS * OPS_PER_CONNECTION / 20,
        "seed {seed}: only {duplicated} duplicated ids"
    );

    // Each operation applied at most once; its replays are identical.
    let mut expected = [INITIAL_CREDITS; USERS];
    let mut applied_ids = vec![];
    let (mut applied, mut insufficient) = (0, 0);
    for (id, results) in &outcomes {
        let firsts: Vec<(&String, usize, i64)> = results
            .iter()
            .filter_map(|o| match o {
                Outcome::Applied { json, user, delta } => Some((json, *user, *delta)),
                Outcome::Insufficient => None,
            })
            .collect();
        insufficient += results.len() - firsts.len();
        if let Some((json, user, delta)) = firsts.first() {
            assert!(
                firsts.iter().all(|f| f.0 == *json),
                "seed {seed}: replays of {id} differ: {firsts:?}"
            );
            expected[*user] += delta;
            applied += 1;
            applied_ids.push(id.clone());
        }
    }
    assert!(
        applied > 0 && insufficient > 0,
        "seed {seed}: applied {applied}, insufficient {insufficient}: balances not tight"
    );
    eprintln!(
        "seed {seed}: {} distinct ids, {duplicated} duplicated, {applied} applied, {insufficient} insufficient, {total_retries} retries of 40001",
        outcomes.len()
    );

    // Exactly one ledger row per applied id, none for the others.
    let ids: Vec<String> = outcomes.keys().cloned().collect();
    let rows = ctx
        .db
        .query("SELECT operation_id, count(*) FROM quota.ledger WHERE operation_id = ANY($1) GROUP BY 1", &[&ids])
        .await
        .unwrap();
    let counts: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for id in &ids {
        let want = i64::from(applied_ids.contains(id));
        assert_eq!(
            counts.get(id).copied().unwrap_or(0),
            want,
            "seed {seed}: ledger rows for {id}"
        );
    }

    // Balances: never below zero, equal to what the calls reported and to the ledger.
    for (i, u) in users.iter().enumerate() {
        let balance = ctx.balance(u).await;
        assert!(balance >= 0, "seed {seed}: {u} below zero: {balance}");
        assert_eq!(
            balance, expected[i],
            "seed {seed}: {u} balance differs from the applied calls"
        );
        let ledger_sum: i64 = ctx
            .db
            .query_one(
                "SELECT coalesce(sum(credits), 0)::bigint FROM quota.ledger WHERE user_id = $1",
                &[u],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            balance, ledger_sum,
            "seed {seed}: {u} balance differs from its ledger"
        );
        let negative: i64 = ctx
            .db
            .query_one(
                "SELECT count(*) FROM quota.ledger WHERE user_id = $1 AND balance_after < 0",
                &[u],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(negative, 0, "seed {seed}: {u} had a negative balance_after");
    }
    ctx.assert_verify_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_operation_id_on_many_connections_applies_once() {
    let ctx = Ctx::new("conc_same_id").await;
    let user = ctx.id("u");
    ctx.db
        .query("SELECT quota.create_user($1)", &[&user])
        .await
        .unwrap();
    ctx.db
        .query(
            "SELECT * FROM quota.bonus($1, 100000, $2)",
            &[&user, &ctx.id("seed")],
        )
        .await
        .unwrap();
    for round in 0..5 {
        let op = Op {
            kind: Kind::Charge,
            user: 0,
            amount_usd: 0.01,
            operation_id: ctx.id(&format!("same{round}")),
        };
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CONNECTIONS));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..CONNECTIONS {
            let (op, users, barrier) = (op.clone(), vec![user.clone()], barrier.clone());
            tasks.spawn(async move {
                let db = connect_db().await;
                barrier.wait().await;
                run_sql(&db, &users, &op).await.0
            });
        }
        let mut jsons = vec![];
        while let Some(done) = tasks.join_next().await {
            match done.unwrap() {
                Outcome::Applied { json, .. } => jsons.push(json),
                Outcome::Insufficient => panic!("insufficient with 100000 credits"),
            }
        }
        assert_eq!(jsons.len(), CONNECTIONS);
        assert!(
            jsons.iter().all(|j| *j == jsons[0]),
            "round {round}: replays differ: {jsons:?}"
        );
        assert_eq!(ctx.ledger_rows(&op.operation_id).await, 1);
    }
    assert_eq!(ctx.balance(&user).await, 100_000 - 5 * 100);
    ctx.assert_verify_clean().await;
}

/// Idempotency keys are scoped per user (issue 9): one operation_id raced by many connections
/// for several users at once applies once for each user, each user's racers get that user's
/// body, and no user's charge is refused or replayed because of another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_operation_id_for_many_users_applies_once_per_user() {
    const RACE_USERS: usize = 4;
    let ctx = Ctx::new("conc_id_users").await;
    let mut users = vec![];
    for _ in 0..RACE_USERS {
        let user = ctx.id("u");
        ctx.db
            .query("SELECT quota.create_user($1)", &[&user])
            .await
            .unwrap();
        ctx.db
            .query(
                "SELECT * FROM quota.bonus($1, 100000, $2)",
                &[&user, &ctx.id("seed")],
            )
            .await
            .unwrap();
        users.push(user);
    }
    for round in 0..3 {
        let operation_id = ctx.id(&format!("shared{round}"));
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CONNECTIONS));
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..CONNECTIONS {
            let op = Op {
                kind: Kind::Charge,
                user: c % RACE_USERS,
                amount_usd: 0.01,
                operation_id: operation_id.clone(),
            };
            let (users, barrier) = (users.clone(), barrier.clone());
            tasks.spawn(async move {
                let db = connect_db().await;
                barrier.wait().await;
                run_sql(&db, &users, &op).await.0
            });
        }
        let mut by_user: HashMap<usize, Vec<String>> = HashMap::new();
        while let Some(done) = tasks.join_next().await {
            match done.unwrap() {
                Outcome::Applied { json, user, delta } => {
                    assert_eq!(delta, -100, "round {round}: {json}");
                    by_user.entry(user).or_default().push(json);
                }
                Outcome::Insufficient => panic!("insufficient with 100000 credits"),
            }
        }
        assert_eq!(by_user.len(), RACE_USERS, "round {round}: {by_user:?}");
        let mut firsts = vec![];
        for (user, jsons) in &by_user {
            assert_eq!(jsons.len(), CONNECTIONS / RACE_USERS);
            assert!(
                jsons.iter().all(|j| *j == jsons[0]),
                "round {round}: replays for user {user} differ: {jsons:?}"
            );
            let body: Value = serde_json::from_str(&jsons[0]).unwrap();
            assert_eq!(body["user_id"], users[*user].as_str(), "{body}");
            firsts.push(jsons[0].clone());
        }
        firsts.sort();
        firsts.dedup();
        assert_eq!(
            firsts.len(),
            RACE_USERS,
            "round {round}: users share a body"
        );
        assert_eq!(
            ctx.ledger_rows(&operation_id).await,
            RACE_USERS as i64,
            "round {round}: one entry per user"
        );
    }
    for user in &users {
        assert_eq!(ctx.balance(user).await, 100_000 - 3 * 100);
    }
    ctx.assert_verify_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_http_charges_with_duplicates_return_identical_bodies() {
    const TASKS: usize = 16;
    const PER_TASK: usize = 50;
    const HTTP_USERS: usize = 2;
    const CREDITS: i64 = 1_000_000;
    let ctx = Ctx::new("conc_http").await;
    let seed = seed();
    let mut rng = Rng(seed);
    let mut users = vec![];
    for _ in 0..HTTP_USERS {
        let u = ctx.create_user().await;
        ctx.top_up_credits(&u, CREDITS).await;
        users.push(u);
    }
    let prefix = ctx.id("op");
    let mut ops = plan_ops(&mut rng, &prefix, TASKS, PER_TASK, HTTP_USERS);
    for list in ops.iter_mut() {
        for op in list.iter_mut() {
            op.kind = Kind::Charge;
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for list in ops {
        let (api, users) = (ctx.api.clone(), users.clone());
        tasks.spawn(async move {
            let mut out = vec![];
            for op in list {
                let resp = api
                    .service(Method::POST, "/api/internal/credits/charge")
                    .json(&json!({"user_id": users[op.user], "cost_usd": op.amount_usd, "operation_id": op.operation_id}))
                    .send()
                    .await;
                out.push((op, resp));
            }
            out
        });
    }
    let mut bodies: HashMap<String, Vec<Value>> = HashMap::new();
    let mut in_progress = 0;
    let mut user_of: HashMap<String, usize> = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        for (op, resp) in done.unwrap() {
            user_of.insert(op.operation_id.clone(), op.user);
            match resp.status {
                200 => {
                    assert_eq!(resp.body["success"], true, "{resp:?}");
                    bodies.entry(op.operation_id).or_default().push(resp.body);
                }
                409 if resp.body["error"] == "in_progress" => {
                    in_progress += 1;
                    bodies.entry(op.operation_id).or_default();
                }
                _ => panic!("seed {seed}: unexpected response {resp:?}"),
            }
        }
    }
    let duplicated = bodies.values().filter(|v| v.len() > 1).count();
    assert!(
        duplicated > 0,
        "seed {seed}: no duplicate was answered twice"
    );
    let mut expected = [CREDITS; HTTP_USERS];
    for (id, list) in &bodies {
        assert!(
            !list.is_empty(),
            "seed {seed}: {id} was only ever answered in_progress"
        );
        assert!(
            list.iter().all(|b| *b == list[0]),
            "seed {seed}: replays of {id} differ: {list:?}"
        );
        expected[user_of[id]] -= int(&list[0], "credits_charged");
        assert_eq!(
            ctx.ledger_rows(id).await,
            1,
            "seed {seed}: ledger rows for {id}"
        );
    }
    eprintln!(
        "seed {seed}: {} ids, {duplicated} answered more than once, {in_progress} in_progress",
        bodies.len()
    );
    for (i, u) in users.iter().enumerate() {
        assert_eq!(
            ctx.balance(u).await,
            expected[i],
            "seed {seed}: balance of {u}"
        );
    }
    ctx.assert_verify_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_http_charges_never_overdraw_a_tight_wallet() {
    let ctx = Ctx::new("conc_http_tight").await;
    let user = ctx.create_user().await;
    ctx.top_up_credits(&user, 1_000).await;
    // 64 concurrent charges of 100 credits (multiplier of a plan-less user is read from calculate).
    let per_charge = {
        let body = ctx
            .api
            .service(Method::POST, "/api/internal/credits/calculate")
            .json(&json!({"cost_usd": 0.01, "user_id": user}))
            .send()
            .await
            .expect(200);
        int(&body, "credits_to_charge")
    };
    assert!(per_charge > 0);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let (api, user, op) = (ctx.api.clone(), user.clone(), ctx.id(&format!("t{i}")));
        tasks.spawn(async move {
            api.service(Method::POST, "/api/internal/credits/charge")
                .json(&json!({"user_id": user, "cost_usd": 0.01, "operation_id": op}))
                .send()
                .await
        });
    }
    let mut ok = 0;
    while let Some(done) = tasks.join_next().await {
        let body = done.unwrap().expect(200);
        if body["success"] == true {
            ok += 1;
        } else {
            assert_eq!(body["error"], "insufficient_credits", "{body}");
        }
    }
    assert_eq!(
        ok,
        1_000 / per_charge,
        "exactly as many charges as the wallet covers"
    );
    assert_eq!(ctx.balance(&user).await, 1_000 - ok * per_charge);
    ctx.assert_verify_clean().await;
}
