//! Dagu 2.15's step spellings — `run:`, `action:` + `with:`, `actions:` — load as the
//! older ones do, side by side with them; Dagu 1.x's `run: <dag>` still calls the DAG,
//! with a warning saying which reading was taken.

use trellis_core::{Action, Step};
use trellis_spec::diag::{Code, Problem};
use trellis_spec::{Loaded, load_str};

fn load(text: &str) -> Loaded {
    match load_str("actions.yaml", text) {
        Ok(loaded) => loaded,
        Err(problems) => panic!(
            "should load:\n{}",
            trellis_spec::diag::render_plain("actions.yaml", text, &problems)
        ),
    }
}

fn refused(text: &str) -> Vec<Problem> {
    match load_str("actions.yaml", text) {
        Ok(_) => panic!("should be refused:\n{text}"),
        Err(problems) => problems.into_iter().filter(|p| !p.warning).collect(),
    }
}

fn step<'d>(steps: &'d [Step], name: &str) -> &'d Step {
    steps.iter().find(|s| s.name == name).expect("the step")
}

fn commands(step: &Step) -> Vec<String> {
    match &step.action {
        Action::Commands { commands } => commands.clone(),
        other => panic!("{} runs {other:?}", step.name),
    }
}

#[test]
fn run_is_a_command_a_script_or_commands_beside_the_older_spellings() {
    let loaded = load(
        "steps:\n  - id: one\n    run: echo one\n  - id: script\n    run: |\n      echo a\n      echo b\n  - id: many\n    run: [echo x, echo y]\n  - id: old\n    command: echo old\n  - id: shelled\n    run: echo $0\n    with: {shell: bash, shell_args: [-e]}\n",
    );
    let steps = &loaded.dag.steps;
    assert_eq!(commands(step(steps, "one")), ["echo one"]);
    assert!(
        matches!(&step(steps, "script").action, Action::Script { script, .. } if script == "echo a\necho b\n")
    );
    assert_eq!(commands(step(steps, "many")), ["echo x", "echo y"]);
    assert_eq!(commands(step(steps, "old")), ["echo old"]);
    let shell = step(steps, "shelled").shell.clone().expect("a shell");
    assert_eq!(
        (shell.program.as_str(), shell.args.clone()),
        ("bash", vec!["-e".to_string()])
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn actions_become_their_step_types_with_their_inputs() {
    let loaded = load(
        r#"steps:
  - id: get
    action: http.request
    with: {method: GET, url: "http://127.0.0.1:1/x", silent: true}
  - id: remote
    action: ssh.run
    with: {host: example.invalid, user: ops, command: uptime}
  - id: up
    action: sftp.upload
    with: {host: example.invalid, source: a.txt, destination: /tmp/a.txt}
  - id: pick
    action: jq.filter
    with: {filter: .a, data: {a: 1}}
  - id: cursor
    action: state.set
    with: {key: cursor, value: 3}
  - id: pause
    action: wait.duration
    with: {duration: 1s}
  - id: say
    action: log.write
    with: {message: hi}
  - id: child
    action: dag.run
    with: {dag: other, params: {A: 1}}
  - id: nothing
    action: noop
  - id: direct
    action: exec
    with: {command: echo, args: [a, 1]}
---
name: other
steps:
  - run: "true"
"#,
    );
    let steps = &loaded.dag.steps;
    let kind = |name: &str| step(steps, name).executor.as_ref().map(|e| e.kind.clone());
    assert_eq!(kind("get").as_deref(), Some("http"));
    assert_eq!(kind("remote").as_deref(), Some("ssh"));
    assert_eq!(commands(step(steps, "remote")), ["uptime"]);
    let up = step(steps, "up").executor.as_ref().expect("sftp");
    assert_eq!(
        (up.kind.as_str(), up.config["direction"].as_str()),
        ("sftp", Some("upload"))
    );
    assert_eq!(kind("pick").as_deref(), Some("jq"));
    let cursor = step(steps, "cursor").executor.as_ref().expect("state");
    assert_eq!(cursor.config["operation"], "set");
    assert_eq!(
        step(steps, "pause").executor.as_ref().expect("wait").config["operation"],
        "duration"
    );
    assert_eq!(kind("say").as_deref(), Some("log"));
    assert!(
        matches!(&step(steps, "child").action, Action::Call(c) if c.dag == "other" && c.params == "A=1")
    );
    assert!(matches!(step(steps, "nothing").action, Action::Noop));
    assert!(
        matches!(&step(steps, "direct").action, Action::Exec { program, args } if program == "echo" && args == &["a", "1"])
    );
}

#[test]
fn custom_actions_fill_their_template_from_with() {
    let loaded = load(
        r#"actions:
  webhook.send:
    description: Post JSON to a webhook
    input_schema:
      type: object
      additionalProperties: false
      required: [url, text]
      properties:
        url: {type: string}
        text: {type: string}
        timeout: {type: integer, default: 10}
    template:
      action: http.request
      with:
        method: POST
        url: '{{ .input.url }}'
        timeout: {$input: timeout}
        body: '{"text": {{ json .input.text }}}'
  greet:
    input_schema: {type: object, properties: {who: {type: string}}}
    template:
      run: echo hello {{ .input.who }}
steps:
  - id: notify
    action: webhook.send
    with: {url: "http://127.0.0.1:1/hook", text: deploy "done"}
  - id: hi
    action: greet
    with: {who: ada}
"#,
    );
    let steps = &loaded.dag.steps;
    let notify = step(steps, "notify");
    assert_eq!(
        notify.description.as_deref(),
        Some("Post JSON to a webhook")
    );
    let http = notify.executor.as_ref().expect("http");
    assert_eq!(http.kind, "http");
    assert_eq!(http.config["url"], "http://127.0.0.1:1/hook");
    assert_eq!(http.config["timeout"], 10, "a typed default");
    assert_eq!(http.config["body"], r#"{"text": "deploy \"done\""}"#);
    assert_eq!(commands(step(steps, "hi")), ["echo hello ada"]);

    let problems = refused(
        "actions:\n  a:\n    input_schema: {type: object, required: [x]}\n    template: {run: echo}\nsteps:\n  - action: a\n",
    );
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("requires input `x`")),
        "{problems:?}"
    );
}

#[test]
fn run_naming_a_dag_calls_it_with_a_warning() {
    let loaded = load(
        "steps:\n  - id: train\n    run: train-model\n    params: EPOCHS=3\n  - id: shell\n    run: echo train-model\n---\nname: train-model\nsteps:\n  - run: \"true\"\n",
    );
    let steps = &loaded.dag.steps;
    assert!(
        matches!(&step(steps, "train").action, Action::Call(c) if c.dag == "train-model" && c.params == "EPOCHS=3")
    );
    assert_eq!(commands(step(steps, "shell")), ["echo train-model"]);
    let warning = loaded
        .warnings
        .iter()
        .find(|w| w.code == Code::LegacyKey)
        .expect("a legacy-key warning");
    assert!(
        warning
            .message
            .contains("read as a call of the DAG `train-model`"),
        "{}",
        warning.message
    );
    // Not a DAG here: a command, as Dagu 2.7+ reads it.
    let loaded = load("steps:\n  - id: t\n    run: hostname\n");
    assert_eq!(commands(step(&loaded.dag.steps, "t")), ["hostname"]);
}

#[test]
fn mixed_or_unknown_spellings_are_refused_with_the_reason() {
    for (text, says) in [
        (
            "steps:\n  - run: echo a\n    command: echo b\n",
            "older spelling",
        ),
        (
            "steps:\n  - run: echo a\n    action: noop\n",
            "`run` and `action` both",
        ),
        (
            "steps:\n  - action: http.reqest\n    with: {method: GET, url: x}\n",
            "unknown action `http.reqest`",
        ),
        (
            "steps:\n  - action: postgres.query\n    with: {query: select 1}\n",
            "not built yet",
        ),
        (
            "steps:\n  - action: http.request\n    with: {url: x}\n",
            "needs `method`",
        ),
        (
            "steps:\n  - action: dag.run\n    with: {name: x}\n",
            "has no input `name`",
        ),
        (
            "steps:\n  - run: echo a\n    with: {image: alpine}\n",
            "takes only `shell`",
        ),
    ] {
        let problems = refused(text);
        assert!(
            problems.iter().any(|p| p.message.contains(says)),
            "{text}: {problems:?}"
        );
    }
}
