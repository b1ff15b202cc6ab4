use super::*;

fn post(meter: Meter, path: &str, body: &str) -> Result<Estimate, Unmeasurable> {
    assert!(meter.reads_body(&Method::POST, path), "{path}");
    meter.estimate(&Method::POST, path, body.as_bytes())
}

mod estimate {
    use super::*;

    #[test]
    fn llm_input_is_bounded_by_the_body_and_output_by_its_cap() {
        let body =
            r#"{"model":"gpt-4o","max_tokens":100,"max_completion_tokens":50,"messages":[]}"#;
        let e = post(Meter::OpenAi, "/v1/chat/completions", body).unwrap();
        assert_eq!(e.input_tokens, body.len() as f64);
        assert_eq!(
            e.output_cap,
            Some(50.0),
            "the smaller cap is the one enforced"
        );
        let e = post(
            Meter::OpenAi,
            "/v1/responses",
            r#"{"input":"hi","stream":true}"#,
        )
        .unwrap();
        assert_eq!(e.output_cap, None);
        assert_eq!(
            e.llm,
            Some(LlmCall {
                api: LlmApi::OpenAiResponses,
                stream: true
            })
        );
        let e = post(Meter::Anthropic, "/v1/messages", r#"{"max_tokens":1024}"#).unwrap();
        assert_eq!(e.output_cap, Some(1024.0));
        let e = post(
            Meter::OpenAi,
            "/v1/completions",
            r#"{"max_tokens":10,"n":3}"#,
        )
        .unwrap();
        assert_eq!(e.output_cap, Some(30.0));
        assert_eq!(e.choices, 3.0);
        let e = post(
            Meter::OpenAi,
            "/v1/completions",
            r#"{"max_tokens":10,"n":2,"best_of":5}"#,
        )
        .unwrap();
        assert_eq!(
            (e.output_cap, e.choices),
            (Some(50.0), 5.0),
            "best_of outputs are generated and billed too"
        );
        let e = post(Meter::OpenAi, "/v1/chat/completions", r#"{"n":4}"#).unwrap();
        assert_eq!((e.output_cap, e.choices), (None, 4.0));
        assert_eq!(
            post(
                Meter::OpenAi,
                "/v1/chat/completions",
                r#"{"max_tokens":1,"max_tokens":9}"#
            ),
            Err(Unmeasurable::NotJson),
            "a repeated key is not counted either way"
        );
        assert!(!Meter::OpenAi.reads_body(&Method::GET, "/v1/models"));
    }

    #[test]
    fn stripe_amounts_on_money_moving_posts() {
        assert_eq!(
            post(Meter::Stripe, "/v1/refunds", "charge=ch_1&amount=4200")
                .unwrap()
                .spend,
            4200.0
        );
        assert_eq!(
            post(
                Meter::Stripe,
                "/v1/payment_intents",
                "amount=99&currency=usd"
            )
            .unwrap()
            .spend,
            99.0
        );
        assert!(matches!(
            post(Meter::Stripe, "/v1/refunds", "charge=ch_1"),
            Err(Unmeasurable::Missing(_))
        ));
        assert!(matches!(
            post(Meter::Stripe, "/v1/refunds", "amount=1&amount=2"),
            Err(Unmeasurable::Missing(_))
        ));
        assert!(!Meter::Stripe.reads_body(&Method::POST, "/v1/customers"));
        assert!(!Meter::Stripe.reads_body(&Method::GET, "/v1/refunds"));
    }

    #[test]
    fn kalshi_notional_is_count_times_price() {
        let path = "/trade-api/v2/portfolio/orders";
        assert_eq!(
            post(Meter::Kalshi, path, r#"{"count":10,"yes_price":35}"#)
                .unwrap()
                .spend,
            350.0
        );
        assert_eq!(
            post(Meter::Kalshi, path, r#"{"count":10,"type":"market"}"#)
                .unwrap()
                .spend,
            1000.0
        );
        assert_eq!(
            post(Meter::Kalshi, path, r#"{"count":10,"buy_max_cost":120}"#)
                .unwrap()
                .spend,
            120.0
        );
        let batched = r#"{"orders":[{"count":1,"no_price":40},{"count":2,"yes_price":10}]}"#;
        assert_eq!(
            post(
                Meter::Kalshi,
                "/trade-api/v2/portfolio/orders/batched",
                batched
            )
            .unwrap()
            .spend,
            60.0
        );
        assert!(post(Meter::Kalshi, path, r#"{"yes_price":35}"#).is_err());
    }

    #[test]
    fn coinbase_size_in_quote_currency() {
        let path = "/api/v3/brokerage/orders";
        let market = r#"{"order_configuration":{"market_market_ioc":{"quote_size":"25.50"}}}"#;
        assert_eq!(post(Meter::Coinbase, path, market).unwrap().spend, 25.5);
        let limit = r#"{"order_configuration":{"limit_limit_gtc":{"base_size":"0.5","limit_price":"100"}}}"#;
        assert_eq!(post(Meter::Coinbase, path, limit).unwrap().spend, 50.0);
        let unknown = r#"{"order_configuration":{"market_market_ioc":{"base_size":"0.5"}}}"#;
        assert!(post(Meter::Coinbase, path, unknown).is_err());
    }
}

mod rewrite {
    use super::*;

    #[test]
    fn sets_a_cap_and_asks_openai_streams_for_usage() {
        let call = LlmCall {
            api: LlmApi::OpenAiChat,
            stream: true,
        };
        let out = call
            .rewrite(br#"{"stream":true,"messages":[]}"#, Some(500))
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["max_completion_tokens"], 500);
        assert_eq!(v["stream_options"]["include_usage"], true);
        let call = LlmCall {
            api: LlmApi::OpenAiCompletions,
            stream: true,
        };
        let out = call
            .rewrite(br#"{"stream":true,"prompt":"x","max_tokens":5}"#, None)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["stream_options"]["include_usage"], true,
            "legacy completions streams report usage only when asked too"
        );
        let call = LlmCall {
            api: LlmApi::OpenAiResponses,
            stream: true,
        };
        assert!(
            call.rewrite(br#"{"stream":true,"max_output_tokens":5}"#, None)
                .is_none(),
            "Responses streams always report usage"
        );
        let call = LlmCall {
            api: LlmApi::AnthropicMessages,
            stream: true,
        };
        assert!(
            call.rewrite(br#"{"max_tokens":5}"#, None).is_none(),
            "nothing to change"
        );
    }
}

mod usage {
    use super::*;

    fn read(content_type: &str, chunks: &[&str]) -> Option<Usage> {
        let mut r = UsageReader::new(Some(content_type));
        for c in chunks {
            r.feed(c.as_bytes());
        }
        r.finish()
    }

    #[test]
    fn json_answers() {
        let u = read(
            "application/json",
            &[
                r#"{"id":"x","usage":{"prompt_tokens":12,"#,
                r#""completion_tokens":7}}"#,
            ],
        );
        assert_eq!(
            u,
            Some(Usage {
                input_tokens: 12.0,
                output_tokens: 7.0
            })
        );
        let u = read(
            "application/json",
            &[r#"{"usage":{"input_tokens":3,"cache_read_input_tokens":10,"output_tokens":4}}"#],
        );
        assert_eq!(
            u,
            Some(Usage {
                input_tokens: 13.0,
                output_tokens: 4.0
            })
        );
        assert_eq!(read("application/json", &[r#"{"error":{}}"#]), None);
    }

    #[test]
    fn anthropic_stream_counts_from_start_and_last_delta() {
        let u = read(
            "text/event-stream",
            &[
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_del",
                "ta\",\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {}\n\n",
            ],
        );
        assert_eq!(
            u,
            Some(Usage {
                input_tokens: 25.0,
                output_tokens: 15.0
            })
        );
    }

    #[test]
    fn openai_streams_final_usage_chunk_and_responses_completed() {
        let u = read(
            "text/event-stream",
            &[
                "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n",
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\r\n\r\ndata: [DONE]\n\n",
            ],
        );
        assert_eq!(
            u,
            Some(Usage {
                input_tokens: 9.0,
                output_tokens: 2.0
            })
        );
        let u = read(
            "text/event-stream; charset=utf-8",
            &["event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":4,\"output_tokens\":6}}}\n\n"],
        );
        assert_eq!(
            u,
            Some(Usage {
                input_tokens: 4.0,
                output_tokens: 6.0
            })
        );
    }
}
