//! In-database tests (`cargo pgrx test`). Each runs in a transaction that is rolled back.
//! Expected errors are caught in a PL/pgSQL block (a subtransaction), so one test can check that a
//! rejected call wrote nothing and that a later call still works.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn run(sql: &str) {
        Spi::run(sql).expect("sql failed");
    }

    fn one_i64(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql)
            .expect("query failed")
            .expect("NULL result")
    }

    fn one_text(sql: &str) -> String {
        Spi::get_one::<String>(sql)
            .expect("query failed")
            .expect("NULL result")
    }

    /// Runs `sql` in a subtransaction; returns its SQLSTATE, or None if it succeeded.
    fn sqlstate_of(sql: &str) -> Option<String> {
        let block = format!(
            "DO $pqt$ BEGIN {sql}; PERFORM set_config('pq_test.sqlstate', '', true);
             EXCEPTION WHEN others THEN PERFORM set_config('pq_test.sqlstate', SQLSTATE, true); END $pqt$"
        );
        run(&block);
        let s = one_text("SELECT current_setting('pq_test.sqlstate')");
        (!s.is_empty()).then_some(s)
    }

    fn setup_user(user: &str, credits: i64) {
        run(&format!("SELECT quota.create_user('{user}')"));
        if credits > 0 {
            run(&format!(
                "SELECT * FROM quota.bonus('{user}', {credits}, 'seed-{user}')"
            ));
        }
    }

    fn balance(user: &str) -> i64 {
        one_i64(&format!(
            "SELECT balance FROM quota.wallets WHERE user_id = '{user}'"
        ))
    }

    fn ledger_rows(operation_id: &str) -> i64 {
        one_i64(&format!(
            "SELECT count(*) FROM quota.ledger WHERE operation_id = '{operation_id}'"
        ))
    }

    fn assert_clean() {
        assert_eq!(
            one_i64("SELECT count(*) FROM quota.verify()"),
            0,
            "quota.verify() found problems"
        );
    }

    #[pg_test]
    fn replay_returns_the_first_row_and_charges_once() {
        setup_user("t1", 1000);
        let first = one_text("SELECT to_jsonb(c)::text FROM quota.charge('t1', 0.0123, 'op-1') c");
        let again = one_text("SELECT to_jsonb(c)::text FROM quota.charge('t1', 0.0123, 'op-1') c");
        assert_eq!(first, again);
        assert_eq!(balance("t1"), 1000 - 123);
        assert_eq!(ledger_rows("op-1"), 1);
        assert_clean();
    }

    #[pg_test]
    fn replay_with_other_amount_or_kind_is_conflict() {
        setup_user("t2", 1000);
        run("SELECT * FROM quota.charge('t2', 0.01, 'op-2')");
        assert_eq!(
            sqlstate_of("PERFORM quota.charge('t2', 0.02, 'op-2')").as_deref(),
            Some("23505")
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.add('t2', 0.01, 'op-2')").as_deref(),
            Some("23505")
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.bonus('t2', 5, 'op-2')").as_deref(),
            Some("23505")
        );
        // Keys are scoped per user: another user's op-2 is theirs, neither a conflict nor a replay.
        setup_user("t2b", 1000);
        assert_eq!(
            sqlstate_of("PERFORM quota.charge('t2b', 0.02, 'op-2')"),
            None
        );
        assert_eq!(balance("t2"), 900);
        assert_eq!(balance("t2b"), 800);
        assert_clean();
    }

    #[pg_test]
    fn insufficient_credits_records_nothing_and_retry_after_top_up_succeeds() {
        setup_user("t3", 40);
        assert_eq!(
            sqlstate_of("PERFORM quota.charge('t3', 0.0055, 'op-3')").as_deref(),
            Some("23514")
        );
        assert_eq!(ledger_rows("op-3"), 0);
        assert_eq!(balance("t3"), 40);
        run("SELECT * FROM quota.bonus('t3', 15, 'top-up-3')");
        run("SELECT * FROM quota.charge('t3', 0.0055, 'op-3')");
        assert_eq!(balance("t3"), 0);
        assert_eq!(ledger_rows("op-3"), 1);
        assert_clean();
    }

    #[pg_test]
    fn refund_never_exceeds_the_charge() {
        setup_user("t4", 1000);
        run("SELECT * FROM quota.charge('t4', 0.01, 'charge-4')"); // 100 credits
        run("SELECT * FROM quota.refund('t4', 'charge-4', 'refund-4a', 60)");
        assert_eq!(
            sqlstate_of("PERFORM quota.refund('t4', 'charge-4', 'refund-4b', 41)").as_deref(),
            Some("23514")
        );
        run("SELECT * FROM quota.refund('t4', 'charge-4', 'refund-4c')"); // the remaining 40
        assert_eq!(
            sqlstate_of("PERFORM quota.refund('t4', 'charge-4', 'refund-4d')").as_deref(),
            Some("23514")
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.refund('t4', 'no-such-charge', 'refund-4e')").as_deref(),
            Some("P0002")
        );
        assert_eq!(balance("t4"), 1000);
        assert_eq!(
            one_i64("SELECT total_spent FROM quota.wallets WHERE user_id = 't4'"),
            0
        );
        assert_clean();
    }

    #[pg_test]
    fn plan_validation_rejects_bad_multiplier_and_purchase_rate() {
        for bad in [
            r#"{"tier":"p","name":"P","multiplier":0}"#,
            r#"{"tier":"p","name":"P","multiplier":-1}"#,
            r#"{"tier":"p","name":"P","purchase_rate":0.99}"#,
            r#"{"tier":"p","name":"P","monthly_cost":-5}"#,
            r#"{"tier":"","name":"P"}"#,
            r#"{"tier":"p","name":"P","surprise":1}"#,
        ] {
            assert_eq!(
                sqlstate_of(&format!("PERFORM quota.create_plan('{bad}')")).as_deref(),
                Some("22023"),
                "{bad}"
            );
        }
        run(
            r#"SELECT quota.create_plan('{"tier":"p","name":"P","multiplier":2,"purchase_rate":1}')"#,
        );
        assert_eq!(
            sqlstate_of(r#"PERFORM quota.create_plan('{"tier":"p","name":"Q"}')"#).as_deref(),
            Some("23505")
        );
        assert_eq!(
            sqlstate_of(r#"PERFORM quota.create_plan('{"tier":"q","name":"P"}')"#).as_deref(),
            Some("23505")
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.set_plan_multiplier('p', 0)").as_deref(),
            Some("22023")
        );
        // A multiplier that makes charges free (1e-320, or anything below 0.001) is refused,
        // through the function and through a DBA's direct UPDATE (the table's CHECK).
        assert_eq!(
            sqlstate_of("PERFORM quota.set_plan_multiplier('p', 1e-320)").as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.set_plan_multiplier('p', 0.0009)").as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate_of("UPDATE quota.plans SET multiplier = 1e-320 WHERE tier = 'p'").as_deref(),
            Some("23514")
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.set_plan_purchase_rate('p', 1001)").as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.set_plan_purchase_rate('p', 0.5)").as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.set_plan_multiplier('nope', 2)").as_deref(),
            Some("P0002")
        );
        assert_eq!(
            one_i64("SELECT count(*) FROM quota.audit_log WHERE subject = 'plan:p'"),
            1
        );
    }

    #[pg_test]
    fn pricing_matches_the_spec_worked_cases() {
        run(
            r#"SELECT quota.create_plan('{"tier":"x15","name":"x15","multiplier":1.5,"purchase_rate":1.2}')"#,
        );
        run(r#"SELECT quota.create_plan('{"tier":"x1","name":"x1","multiplier":1}')"#);
        run("SELECT quota.set_exchange_rate(10000)");
        let credits = |cost: &str, tier: &str| {
            one_i64(&format!(
                "SELECT credits_to_charge FROM quota.calculate_credits({cost}, tier => '{tier}')"
            ))
        };
        assert_eq!(credits("0.0123", "x15"), 184);
        assert_eq!(credits("0.00025", "x1"), 2);
        assert_eq!(credits("0.00035", "x1"), 4);
        assert_eq!(credits("0.00045", "x1"), 4);
        assert_eq!(credits("0.00015", "x1"), 1);
        setup_user("t6", 0);
        run("SELECT * FROM quota.update_subscription('t6', 'x15', 0, 'sub-6')");
        assert_eq!(
            one_i64("SELECT credits_added FROM quota.add('t6', 10, 'add-6')"),
            120_000
        );
    }

    #[pg_test]
    fn subscription_rules() {
        run(r#"SELECT quota.create_plan('{"tier":"s1","name":"S1"}')"#);
        run(r#"SELECT quota.create_plan('{"tier":"s2","name":"S2"}')"#);
        setup_user("t7", 0);
        let first = one_text(
            "SELECT to_jsonb(s)::text FROM quota.update_subscription('t7', 's1', 500, 'sub-7') s",
        );
        let again = one_text(
            "SELECT to_jsonb(s)::text FROM quota.update_subscription('t7', 's1', 500, 'sub-7') s",
        );
        assert_eq!(first, again);
        assert_eq!(
            sqlstate_of("PERFORM quota.update_subscription('t7', 's1', 0, 'sub-7b')").as_deref(),
            Some("23505")
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.update_subscription('t7', 'zz', 0, 'sub-7c')").as_deref(),
            Some("P0002")
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.delete_plan('s1')").as_deref(),
            Some("23503")
        );
        run("SELECT * FROM quota.update_subscription('t7', 's2', 0, 'sub-7d')");
        run("SELECT quota.delete_plan('s1')");
        assert_eq!(balance("t7"), 500);
        assert_clean();
    }

    #[pg_test]
    fn bad_arguments_are_22023_and_write_nothing() {
        setup_user("t8", 1000);
        for call in [
            "quota.charge('t8', 'NaN'::float8, 'bad-1')",
            "quota.charge('t8', 'Infinity'::float8, 'bad-2')",
            "quota.charge('t8', 0, 'bad-3')",
            "quota.charge('t8', -1, 'bad-4')",
            "quota.charge('t8', 1e300, 'bad-5')",
            "quota.charge('t8', 0.01, repeat('x', 256))",
            "quota.charge('t8', 0.01, '')",
            "quota.bonus('t8', 0, 'bad-6')",
            "quota.bonus('t8', -5, 'bad-7')",
        ] {
            assert_eq!(
                sqlstate_of(&format!("PERFORM {call}")).as_deref(),
                Some("22023"),
                "{call}"
            );
        }
        assert_eq!(
            sqlstate_of("PERFORM quota.charge('ghost', 0.01, 'bad-8')").as_deref(),
            Some("P0002")
        );
        assert_eq!(
            sqlstate_of(&format!(
                "PERFORM quota.charge('t8', 0.01, '{}')",
                "y".repeat(255)
            )),
            None
        );
        assert_eq!(
            one_i64("SELECT count(*) FROM quota.ledger WHERE operation_id LIKE 'bad-%'"),
            0
        );
        assert_eq!(balance("t8"), 900);
    }

    #[pg_test]
    fn verify_reports_a_tampered_wallet() {
        setup_user("t9", 100);
        assert_clean();
        run("UPDATE quota.wallets SET balance = 99 WHERE user_id = 't9'");
        assert!(one_i64("SELECT count(*) FROM quota.verify() WHERE subject = 'user:t9'") >= 1);
    }

    #[pg_test]
    fn api_tokens_resolve_until_revoked() {
        setup_user("t10", 0);
        let (id, token) = Spi::get_two::<i64, String>(
            "SELECT token_id, token FROM quota.issue_api_token('t10', 'cli')",
        )
        .expect("issue");
        let (id, token) = (id.unwrap(), token.unwrap());
        assert!(token.starts_with("pq_") && token.len() == 67);
        assert_eq!(
            one_text(&format!("SELECT quota.resolve_api_token('{token}')")),
            "t10"
        );
        // Only the hash is stored.
        assert_eq!(
            one_i64(&format!(
                "SELECT count(*) FROM quota.api_tokens WHERE token_sha256::text LIKE '%{}%'",
                &token[3..]
            )),
            0
        );
        assert!(
            Spi::get_one::<bool>(&format!("SELECT quota.revoke_api_token({id})"))
                .unwrap()
                .unwrap()
        );
        assert_eq!(
            Spi::get_one::<String>(&format!("SELECT quota.resolve_api_token('{token}')")).unwrap(),
            None
        );
        assert_eq!(
            Spi::get_one::<String>("SELECT quota.resolve_api_token('pq_nope')").unwrap(),
            None
        );
    }

    #[pg_test]
    fn users_are_created_updated_and_imported() {
        run(
            r#"SELECT quota.create_user('t11', '{"github_star":"zgsm,abc","vip":2,"register_time":"2023-01-01 00:00:00"}')"#,
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.create_user('t11')").as_deref(),
            Some("23505")
        );
        assert_eq!(
            sqlstate_of(r#"PERFORM quota.update_user('t11', '{"org":"acme"}')"#).as_deref(),
            Some("P0002")
        );
        run(r#"SELECT quota.create_organization('acme')"#);
        run(r#"SELECT quota.update_user('t11', '{"org":"acme"}')"#);
        // Moving into an organization does not change an existing user's limit; creating does.
        assert_eq!(
            one_text("SELECT unlimited::text FROM quota.users WHERE id = 't11'"),
            "false"
        );
        assert_eq!(
            one_text("SELECT org FROM quota.users WHERE id = 't11'"),
            "acme"
        );
        assert_eq!(one_i64("SELECT vip FROM quota.users WHERE id = 't11'"), 2);
        assert_eq!(
            sqlstate_of(r#"PERFORM quota.update_user('t11', '{"vip":-3}')"#).as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate_of(r#"PERFORM quota.update_user('ghost', '{"vip":1}')"#).as_deref(),
            Some("P0002")
        );
        let r = one_text(
            r#"SELECT quota.import_users('[{"id":"t11","vip":5},{"id":"t12","name":"Twelve"}]')::text"#,
        );
        assert_eq!(r, r#"{"created": 1, "updated": 1}"#);
        assert_eq!(
            one_i64("SELECT count(*) FROM quota.wallets WHERE user_id IN ('t11', 't12')"),
            2
        );
        // All or nothing: one bad row, nothing imported.
        assert_eq!(
            sqlstate_of(r#"PERFORM quota.import_users('[{"id":"t13"},{"id":"t14","vip":"x"}]')"#)
                .as_deref(),
            Some("22023")
        );
        assert_eq!(
            one_i64("SELECT count(*) FROM quota.users WHERE id IN ('t13', 't14')"),
            0
        );
    }

    #[pg_test]
    fn exchange_rate_applies_on_the_first_call() {
        run("SELECT quota.set_exchange_rate(20000)");
        assert_eq!(
            one_i64("SELECT base_rate FROM quota.calculate_credits(1)"),
            20000
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.set_exchange_rate(0)").as_deref(),
            Some("22023")
        );
    }

    #[pg_test]
    fn charge_prices_with_the_current_base_rate() {
        // The charge caches base_rate per backend; a change in this transaction (through the
        // function or a plain UPDATE) is in force for the next command.
        run("SELECT quota.create_user('t_rate')");
        run("SELECT quota.bonus('t_rate', 1000000, 't_rate-b')");
        assert_eq!(
            one_i64("SELECT credits_charged FROM quota.charge('t_rate', 0.01, 't_rate-1')"),
            100
        );
        run("SELECT quota.set_exchange_rate(20000)");
        assert_eq!(
            one_i64("SELECT credits_charged FROM quota.charge('t_rate', 0.01, 't_rate-2')"),
            200
        );
        run("UPDATE quota.settings SET base_rate = 30000");
        assert_eq!(
            one_i64("SELECT credits_charged FROM quota.charge('t_rate', 0.01, 't_rate-3')"),
            300
        );
        run("TRUNCATE quota.settings");
        assert_eq!(
            sqlstate_of("PERFORM quota.charge('t_rate', 0.01, 't_rate-4')").as_deref(),
            Some("P0002")
        );
        run("INSERT INTO quota.settings DEFAULT VALUES");
        assert_eq!(
            one_i64("SELECT credits_charged FROM quota.charge('t_rate', 0.01, 't_rate-5')"),
            100
        );
        // A replay in the same transaction puts the wallet back: one charge of 100 for t_rate-5.
        assert_eq!(
            one_i64("SELECT transaction_id FROM quota.charge('t_rate', 0.01, 't_rate-5')"),
            one_i64("SELECT transaction_id FROM quota.ledger WHERE operation_id = 't_rate-5'")
        );
        assert_eq!(
            one_i64("SELECT balance FROM quota.wallets WHERE user_id = 't_rate'"),
            1000000 - 100 - 200 - 300 - 100
        );
        assert_eq!(one_i64("SELECT count(*) FROM quota.verify()"), 0);
    }

    #[pg_test]
    fn worker_status_reports_the_preloaded_worker() {
        let state = one_text("SELECT state FROM quota.worker_status()");
        assert!(
            ["starting", "waiting_for_extension", "running"].contains(&state.as_str()),
            "unexpected worker state {state}"
        );
    }
    #[pg_test]
    fn wallet_multiplier_follows_the_plan_and_the_subscription() {
        let multiplier = |u: &str| {
            Spi::get_one::<f64>(&format!(
                "SELECT multiplier FROM quota.wallets WHERE user_id = '{u}'"
            ))
            .unwrap()
            .unwrap()
        };
        run(r#"SELECT quota.create_plan('{"tier":"m1","name":"M1","multiplier":2}')"#);
        setup_user("t12", 10_000);
        assert_eq!(multiplier("t12"), 1.0);
        run("SELECT * FROM quota.update_subscription('t12', 'm1', 0, 'sub-12')");
        assert_eq!(multiplier("t12"), 2.0);
        assert_eq!(
            one_i64("SELECT credits_charged FROM quota.charge('t12', 0.01, 'c12a')"),
            200
        );
        run("SELECT quota.set_plan_multiplier('m1', 3)");
        assert_eq!(
            one_i64("SELECT credits_charged FROM quota.charge('t12', 0.01, 'c12b')"),
            300
        );
        // Plain SQL changes are followed too.
        run("UPDATE quota.plans SET multiplier = 4 WHERE tier = 'm1'");
        assert_eq!(multiplier("t12"), 4.0);
        run("DELETE FROM quota.subscriptions WHERE user_id = 't12'");
        assert_eq!(multiplier("t12"), 1.0);
        assert_clean();
        run("UPDATE quota.wallets SET multiplier = 9 WHERE user_id = 't12'");
        assert_eq!(
            one_i64("SELECT count(*) FROM quota.verify() WHERE problem LIKE 'wallet multiplier%'"),
            1
        );
    }

    /// The two back ends of the condition language agree: the compiled SQL predicate
    /// (quota.match_users) and the per-user evaluator, on generated expressions and users
    /// (ids and values include quotes, backslashes, `$1` and `;--`).
    #[pg_test]
    fn compiled_condition_agrees_with_the_evaluator() {
        use quota_core::condition::{eval, parse, sample_expressions, sample_users};
        use std::collections::BTreeSet;
        let users = sample_users(7, 60);
        for u in &users {
            let ts = |t: &Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339());
            Spi::run_with_args(
                "INSERT INTO quota.organizations (id, name) SELECT $1, $1 WHERE $1 IS NOT NULL
                 ON CONFLICT (id) DO NOTHING",
                &[u.org.clone().into()],
            )
            .unwrap();
            Spi::run_with_args(
                "INSERT INTO quota.users (id, vip, org, github_star, register_time, access_time)
                 VALUES ($1, $2, $3, $4, $5::timestamptz, $6::timestamptz)",
                &[
                    u.id.as_str().into(),
                    u.vip.into(),
                    u.org.clone().into(),
                    u.github_star.clone().into(),
                    ts(&u.register_time).into(),
                    ts(&u.access_time).into(),
                ],
            )
            .unwrap();
            Spi::run_with_args(
                "INSERT INTO quota.wallets (user_id) VALUES ($1)",
                &[u.id.as_str().into()],
            )
            .unwrap();
            if u.balance > 0 {
                Spi::run_with_args(
                    "SELECT * FROM quota.bonus($1, $2, 'seed-' || $1)",
                    &[u.id.as_str().into(), u.balance.into()],
                )
                .unwrap();
            }
        }
        let mut matched_any = 0;
        for text in sample_expressions(11, 300) {
            let expr = parse(&text).unwrap();
            let by_sql: BTreeSet<String> = crate::condition::matching_user_ids(&expr)
                .into_iter()
                .collect();
            let by_eval: BTreeSet<String> = users
                .iter()
                .filter(|u| eval(&expr, u))
                .map(|u| u.id.clone())
                .collect();
            assert_eq!(by_sql, by_eval, "condition {text}");
            if !by_eval.is_empty() && by_eval.len() < users.len() {
                matched_any += 1;
            }
            // The evaluator over facts read back from the database agrees too.
            for u in users.iter().take(5) {
                let facts = crate::condition::user_facts(&u.id).unwrap();
                assert_eq!(
                    eval(&expr, &facts),
                    eval(&expr, u),
                    "condition {text}, user {}",
                    u.id
                );
            }
        }
        assert!(
            matched_any > 50,
            "too few discriminating expressions: {matched_any}"
        );
    }

    #[pg_test]
    fn condition_functions_in_sql() {
        assert_eq!(
            one_text("SELECT quota.parse_condition('and( is-vip(1) , github-star(zgsm) )')"),
            r#"and(is-vip(1), github-star("zgsm"))"#
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.parse_condition('')").as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.parse_condition('and(is-vip(1)')").as_deref(),
            Some("22023")
        );
        run(r#"SELECT quota.create_user('cv1', '{"vip":2,"github_star":"zgsm"}')"#);
        run(r#"SELECT quota.create_user('cv2', '{"vip":0}')"#);
        assert!(Spi::get_one::<bool>(
            "SELECT quota.eval_condition('and(is-vip(1), github-star(\"zgsm\"))', 'cv1')"
        )
        .unwrap()
        .unwrap());
        assert_eq!(
            one_text("SELECT string_agg(id, ',') FROM quota.match_users('is-vip(1) or match-user(cv2)') id"),
            "cv1,cv2"
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.eval_condition('true()', 'nobody')").as_deref(),
            Some("P0002")
        );
    }

    fn strategy_id(json: &str) -> i64 {
        one_i64(&format!(
            "SELECT (quota.create_strategy('{json}') ->> 'id')::bigint"
        ))
    }

    fn executions(strategy: i64) -> i64 {
        one_i64(&format!(
            "SELECT count(*) FROM quota.executions WHERE strategy_id = {strategy}"
        ))
    }

    #[pg_test]
    fn strategies_are_validated_and_managed() {
        let id = strategy_id(
            r#"{"name":"test-strategy","title":"Test Strategy","type":"single","amount":10,"model":"gpt-3.5-turbo","condition":"github-star(\"zgsm\")","status":true}"#,
        );
        assert_eq!(
            one_text(&format!("SELECT quota.get_strategy({id}) ->> 'condition'")),
            r#"github-star("zgsm")"#
        );
        for bad in [
            r#"{"name":"b1","type":"weekly","amount":1,"condition":"true()"}"#,
            r#"{"name":"b2","type":"single","amount":0,"condition":"true()"}"#,
            r#"{"name":"b3","type":"single","amount":1,"condition":""}"#,
            r#"{"name":"b4","type":"single","amount":1,"condition":"is-vip("}"#,
            r#"{"name":"b5","type":"periodic","amount":1,"condition":"true()","periodic_expr":"61 * * * *"}"#,
            r#"{"name":"b6","type":"periodic","amount":1,"condition":"true()"}"#,
        ] {
            assert_eq!(
                sqlstate_of(&format!("PERFORM quota.create_strategy('{bad}')")).as_deref(),
                Some("22023"),
                "{bad}"
            );
        }
        assert_eq!(
            sqlstate_of(r#"PERFORM quota.create_strategy('{"name":"test-strategy","type":"single","amount":1,"condition":"true()"}')"#).as_deref(),
            Some("23505")
        );
        let off = strategy_id(
            r#"{"name":"off","type":"single","amount":1,"condition":"true()","status":false}"#,
        );
        assert_eq!(
            one_text(&format!("SELECT quota.get_strategy({off}) ->> 'status'")),
            "false"
        );
        assert_eq!(
            one_i64("SELECT (quota.list_strategies(false) ->> 'total')::bigint"),
            1
        );
        assert_eq!(
            one_i64("SELECT (quota.list_strategies(true) ->> 'total')::bigint"),
            1
        );
        assert_eq!(
            one_text(&format!(
                "SELECT quota.enable_strategy({off}) ->> 'message'"
            )),
            "strategy enabled successfully"
        );
        assert_eq!(
            one_text(&format!(
                "SELECT quota.disable_strategy({off}) ->> 'message'"
            )),
            "strategy disabled successfully"
        );
        run(&format!(
            r#"SELECT quota.update_strategy({id}, '{{"amount": 20, "title": "T2"}}')"#
        ));
        assert_eq!(
            one_i64(&format!(
                "SELECT (quota.get_strategy({id}) ->> 'amount')::bigint"
            )),
            20
        );
        assert_eq!(
            sqlstate_of(&format!(
                r#"PERFORM quota.update_strategy({id}, '{{"colour": 1}}')"#
            ))
            .as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate_of(r#"PERFORM quota.update_strategy(999999, '{"amount": 2}')"#).as_deref(),
            Some("P0002")
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.enable_strategy(999999)").as_deref(),
            Some("P0002")
        );
        assert_eq!(
            one_text(&format!(
                "SELECT quota.delete_strategy({off}) ->> 'message'"
            )),
            "strategy deleted successfully"
        );
        assert_eq!(
            sqlstate_of(&format!("PERFORM quota.get_strategy({off})")).as_deref(),
            Some("P0002")
        );
    }

    #[pg_test]
    fn single_strategy_recharges_each_matching_user_once() {
        run(r#"SELECT quota.create_user('s1', '{"vip":1,"github_star":"zgsm"}')"#);
        run(r#"SELECT quota.create_user('s2', '{"vip":1}')"#);
        run(r#"SELECT quota.create_user('s3', '{"vip":0,"github_star":"zgsm"}')"#);
        let id = strategy_id(
            r#"{"name":"vip-star","type":"single","amount":100,"condition":"and(is-vip(1), github-star(\"zgsm\"))"}"#,
        );
        assert_eq!(one_i64(&format!("SELECT recharged FROM quota.scan('2030-01-01 00:00:00+00') WHERE strategy_id = {id}")), 1);
        assert_eq!(one_i64(&format!("SELECT recharged FROM quota.scan('2030-01-01 01:00:00+00') WHERE strategy_id = {id}")), 0);
        assert_eq!(balance("s1"), 100);
        assert_eq!(balance("s2") + balance("s3"), 0);
        // A user who comes to match later is recharged by a later scan, once.
        run(r#"SELECT quota.update_user('s2', '{"github_star":"zgsm"}')"#);
        assert_eq!(one_i64(&format!("SELECT recharged FROM quota.scan('2030-01-01 02:00:00+00') WHERE strategy_id = {id}")), 1);
        assert_eq!(executions(id), 2);
        assert_eq!(one_i64("SELECT count(*) FROM quota.outbox o JOIN quota.executions e ON e.id = o.execution_id WHERE e.status = 'pending'"), 2);
        assert_eq!(
            one_text(&format!(
                "SELECT min(batch_number) FROM quota.executions WHERE strategy_id = {id}"
            )),
            "20300101000000"
        );
        // Deleting the strategy keeps its executions.
        run(&format!("SELECT quota.delete_strategy({id})"));
        assert_eq!(executions(id), 2);
        assert_clean();
    }

    #[pg_test]
    fn periodic_strategy_fires_once_per_cron_time_without_catch_up_bursts() {
        run(r#"SELECT quota.create_user('p1', '{"vip":2}')"#);
        // Daily at 08:00:00 (the seed's 6-field form), evaluated in UTC.
        let id = strategy_id(
            r#"{"name":"daily","type":"periodic","amount":5,"periodic_expr":"0 0 8 * * *","condition":"is-vip(1)"}"#,
        );
        let scan = |at: &str| {
            one_i64(&format!("SELECT coalesce(sum(recharged), 0)::bigint FROM quota.scan('{at}') WHERE strategy_id = {id}"))
        };
        assert_eq!(scan("2030-01-01 09:00:00+00"), 1);
        assert_eq!(
            scan("2030-01-01 09:00:00+00"),
            0,
            "a rerun of the same scan"
        );
        assert_eq!(
            scan("2030-01-01 20:00:00+00"),
            0,
            "a manual scan between fires"
        );
        assert_eq!(
            scan("2030-01-02 08:00:00+00"),
            1,
            "the next fire, exactly on time"
        );
        assert_eq!(
            scan("2030-01-06 12:00:00+00"),
            1,
            "four missed fires run once"
        );
        assert_eq!(balance("p1"), 15);
        // max_exec_per_user caps the total per user; raising it lets the next fire run.
        run(&format!(
            r#"SELECT quota.update_strategy({id}, '{{"max_exec_per_user": 3}}')"#
        ));
        assert_eq!(scan("2030-01-07 09:00:00+00"), 0);
        run(&format!(
            r#"SELECT quota.update_strategy({id}, '{{"max_exec_per_user": 4}}')"#
        ));
        assert_eq!(scan("2030-01-08 09:00:00+00"), 1);
        run(&format!(
            r#"SELECT quota.update_strategy({id}, '{{"max_exec_per_user": 1}}')"#
        ));
        assert_eq!(scan("2030-01-09 09:00:00+00"), 0);
        // A disabled strategy does not run.
        run(&format!(
            r#"SELECT quota.update_strategy({id}, '{{"max_exec_per_user": 0}}')"#
        ));
        run(&format!("SELECT quota.disable_strategy({id})"));
        assert_eq!(scan("2030-01-10 09:00:00+00"), 0);
        assert_eq!(executions(id), 4);
        assert_clean();
    }

    #[pg_test]
    fn quota_le_reads_the_wallet_balance() {
        setup_user("q1", 50);
        setup_user("q2", 500);
        let id = strategy_id(
            r#"{"name":"low","type":"single","amount":7,"condition":"quota-le(\"gpt-4\", 100)"}"#,
        );
        assert_eq!(
            one_i64(&format!(
                "SELECT recharged FROM quota.scan('2030-01-01') WHERE strategy_id = {id}"
            )),
            1
        );
        assert_eq!(balance("q1"), 57);
        assert_eq!(balance("q2"), 500);
    }

    #[pg_test]
    fn outbox_protocol_claims_leases_retries_fails_and_completes() {
        run(r#"SELECT quota.create_user('o1', '{"vip":1}')"#);
        let id = strategy_id(
            r#"{"name":"relay","type":"single","amount":9,"condition":"match-user(o1)"}"#,
        );
        run(&format!(
            "SELECT * FROM quota.scan('2030-01-01') WHERE strategy_id = {id}"
        ));
        let exec = one_i64("SELECT id FROM quota.executions WHERE user_id = 'o1'");
        let (outbox, attempts) =
            Spi::get_two::<i64, i32>("SELECT outbox_id, attempts FROM quota.outbox_claim(10, 60)")
                .unwrap();
        let outbox = outbox.unwrap();
        assert_eq!(attempts, Some(1));
        // Leased: a second claim (another sidecar) does not see it.
        assert_eq!(
            one_i64("SELECT count(*) FROM quota.outbox_claim(10, 60)"),
            0
        );
        run(&format!(
            "SELECT quota.outbox_retry({outbox}, 'HTTP 500', 0)"
        ));
        assert_eq!(
            one_text(&format!(
                "SELECT last_error FROM quota.executions WHERE id = {exec}"
            )),
            "HTTP 500"
        );
        assert_eq!(
            one_i64("SELECT attempts FROM quota.outbox_claim(10, 60)"),
            2
        );
        run(&format!("SELECT quota.outbox_fail({outbox}, 'gave up')"));
        assert_eq!(
            one_text(&format!(
                "SELECT status FROM quota.executions WHERE id = {exec}"
            )),
            "failed"
        );
        assert_eq!(balance("o1"), 9, "a failed relay keeps the credit");
        assert_eq!(
            sqlstate_of(&format!("PERFORM quota.retry_execution({exec} + 1000)")).as_deref(),
            Some("P0002")
        );
        run(&format!("SELECT quota.retry_execution({exec})"));
        assert_eq!(
            sqlstate_of(&format!("PERFORM quota.retry_execution({exec})")).as_deref(),
            Some("22023")
        );
        let outbox = one_i64("SELECT outbox_id FROM quota.outbox_claim(10, 60)");
        assert!(
            Spi::get_one::<bool>(&format!("SELECT quota.outbox_complete({outbox})"))
                .unwrap()
                .unwrap()
        );
        assert_eq!(
            one_text(&format!(
                "SELECT status FROM quota.executions WHERE id = {exec}"
            )),
            "completed"
        );
        assert_eq!(one_i64("SELECT count(*) FROM quota.outbox"), 0);
        // Without the relay, a scan completes executions at once and queues nothing.
        run("SET LOCAL quota.relay = off");
        run(r#"SELECT quota.create_user('o2', '{"vip":1}')"#);
        let id2 = strategy_id(
            r#"{"name":"no-relay","type":"single","amount":3,"condition":"match-user(o2)"}"#,
        );
        run(&format!(
            "SELECT * FROM quota.scan('2030-01-01') WHERE strategy_id = {id2}"
        ));
        assert_eq!(
            one_text("SELECT status FROM quota.executions WHERE user_id = 'o2'"),
            "completed"
        );
        assert_eq!(one_i64("SELECT count(*) FROM quota.outbox"), 0);
        assert_clean();
    }

    /// Every function of the extension, called with SQL NULL for every argument, either works
    /// or raises a documented SQLSTATE: never an internal error (XX000), never a crash.
    #[pg_test]
    fn null_arguments_are_clear_errors() {
        let calls = Spi::connect(|client| {
            client
                .select(
                    "SELECT format('SELECT * FROM %s(%s)', p.oid::regproc,
                                   (SELECT string_agg('NULL::' || format_type(t, NULL), ', ' ORDER BY i)
                                      FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, i)))
                       FROM pg_proc p
                      WHERE p.pronamespace = 'quota'::regnamespace AND p.prokind = 'f'
                        AND p.prorettype <> 'trigger'::regtype AND p.pronargs > 0",
                    None,
                    &[],
                )
                .unwrap()
                .map(|r| r.get::<String>(1).unwrap().unwrap_or_default())
                .collect::<Vec<_>>()
        });
        assert!(calls.len() > 30, "found only {} functions", calls.len());
        let mut internal = Vec::new();
        for call in &calls {
            if let Some(state) = sqlstate_of(&call.replacen("SELECT", "PERFORM", 1)) {
                if state == "XX000" || state.starts_with("58") {
                    internal.push(format!("{call}: {state}"));
                }
            }
        }
        assert!(
            internal.is_empty(),
            "internal errors on NULL arguments: {internal:#?}"
        );
        // The hot path names the argument.
        assert_eq!(
            sqlstate_of("PERFORM quota.charge(NULL, 0.01, 'n1')").as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate_of("PERFORM quota.add('u', NULL, 'n2')").as_deref(),
            Some("22023")
        );
    }

    /// A hold ends exactly once: released, then neither settle nor release nor expiry moves it
    /// again; an abandoned hold is released by expire_reservations (the worker's job) once.
    #[pg_test]
    fn a_hold_ends_exactly_once() {
        run(r#"SELECT quota.create_organization('o1', '{"quota":100}')"#);
        run(r#"SELECT quota.create_user('h1', '{"org":"o1","unlimited":false}')"#);
        run("SELECT * FROM quota.bonus('h1', 50, 'seed')");
        let r1 = one_i64("SELECT reservation_id FROM quota.reserve('a', 'h1', 30)");
        assert_eq!(
            sqlstate_of("PERFORM * FROM quota.reserve('b', 'h1', 21)").as_deref(),
            Some("23514")
        );
        run(&format!("SELECT * FROM quota.release({r1}, 'a-end')"));
        assert_eq!(
            sqlstate_of(&format!("PERFORM * FROM quota.settle({r1}, 1, 'a-end-2')")).as_deref(),
            Some("55000")
        );
        assert_eq!(
            one_i64("SELECT held_credits FROM quota.wallets WHERE user_id = 'h1'"),
            0
        );
        let r2 = one_i64("SELECT reservation_id FROM quota.reserve('c', 'h1', 40, ttl_s => 1)");
        run("SET LOCAL quota.now_override = '2999-01-01 00:00:00+00'");
        assert_eq!(
            one_i64("SELECT expired::int8 FROM quota.expire_reservations()"),
            1
        );
        assert_eq!(
            one_i64("SELECT expired::int8 FROM quota.expire_reservations()"),
            0
        );
        assert_eq!(
            one_text(&format!(
                "SELECT status FROM quota.reservations WHERE reservation_id = {r2}"
            )),
            "expired"
        );
        assert_eq!(
            one_i64("SELECT held_quota FROM quota.organizations WHERE id = 'o1'"),
            0
        );
        assert_eq!(one_i64("SELECT count(*) FROM quota.verify()"), 0);
    }
}
