"""Linking: one shared payment fingerprint links; one shared NAT or SDK user agent does not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from antidistill.monitor.api import ExchangeEvent
from antidistill.monitor.cluster import PAIR_KIND, Linker, attributes, link_keys
from antidistill.monitor.features import FeatureTracker

T0 = datetime(2026, 2, 2, tzinfo=UTC)


def run(accounts: dict[str, dict], n: int = 12) -> tuple[Linker, FeatureTracker]:
    """Each account sends ``n`` requests from its address/UA/prompt; returns the linker after registering."""
    ft, lk = FeatureTracker(), Linker()
    for i in range(n):
        for aid, spec in accounts.items():
            at = T0 + timedelta(minutes=i * 7 + sum(map(ord, aid)) % 5)
            ev = ExchangeEvent(
                aid,
                at,
                prompt=spec["prompt"] + f" {aid}{i}",
                client_addr=spec.get("addr"),
                user_agent=spec.get("ua"),
                account_metadata=spec.get("meta", {}),
            )
            ft.add(ev)
            lk.add_account(aid)
    for aid in accounts:
        lk.register(aid, attributes(ft.accounts[aid]), ft.accounts)
    return lk, ft


def test_shared_payment_fingerprint_links_even_across_networks():
    lk, _ = run(
        {
            "a": {
                "prompt": "hello there",
                "addr": "198.51.100.7",
                "ua": "ua-1",
                "meta": {"payment_fingerprint": "pf_1"},
            },
            "b": {
                "prompt": "totally different words",
                "addr": "203.0.113.9",
                "ua": "ua-2",
                "meta": {"payment_fingerprint": "pf_1"},
            },
        }
    )
    assert lk.find("a") == lk.find("b")
    c = lk.cluster_of("a")
    assert c is not None and sorted(c.members) == ["a", "b"] and "payment fingerprint" in lk.linked_by(c)


def test_a_university_nat_and_a_common_sdk_alone_do_not_link():
    topics = [
        "why is the sky blue",
        "best pasta recipe with garlic",
        "help me fix my bike chain",
        "poem about autumn leaves",
        "explain tax brackets simply",
        "translate bonjour to german",
    ]
    students = {
        f"s{i}": {
            "prompt": topics[i],
            "addr": "192.0.2.10",
            "ua": "OpenAI/Python 1.99.1",
            "meta": {"signup_source": "web"},
        }
        for i in range(6)
    }
    lk, ft = run(students)
    assert len({lk.find(s) for s in students}) == len(students)
    assert set(attributes(ft.accounts["s0"])) >= {"prefix", "agent", "signup"}


def test_nat_plus_agent_plus_shared_template_links():
    hydra = {
        f"h{i}": {
            "prompt": "Write a detailed, comprehensive, expert answer to the following question about",
            "addr": f"192.0.2.{10 + i}",
            "ua": "Go-http-client/2.0",
        }
        for i in range(5)
    }
    lk, _ = run(hydra)
    assert len({lk.find(h) for h in hydra}) == 1


def test_link_keys_are_minimal_combinations():
    keys = list(link_keys({"payment": ["p"], "prefix": ["n"], "agent": ["u"], "template": ["7"], "signup": ["web"]}))
    kinds = {tuple(k for k, _ in key) for key in keys}
    assert ("payment",) in kinds
    assert all("payment" not in k or k == ("payment",) for k in kinds)  # nothing bigger than a minimal key
    assert (
        ("template", "prefix", "agent") in kinds
        or ("prefix", "template", "agent") in kinds
        or any(set(k) == {"template", "prefix", "agent"} for k in kinds)
    )
    assert not any(set(k) == {"prefix", "agent", "signup"} for k in kinds)  # 0.8 < 1


def test_groups_paying_with_different_cards_join_on_shared_templates_and_signup_burst():
    from antidistill.monitor.cluster import cluster_attributes

    specs = {}
    for g in range(3):
        for m in range(4):
            meta = {
                "payment_fingerprint": f"pf_{g}",
                "signup_at": f"2026-01-0{4 + m % 2}T10:00:00",
                "signup_source": "web",
            }
            specs[f"g{g}m{m}"] = {
                "prompt": "Instruction: write a tutorial about the subject below, in depth.",
                "addr": f"203.0.{g * 10 + m}.9",
                "ua": f"ua-{g}-{m}",
                "meta": meta,
            }
    lk, ft = run(specs)
    roots = {lk.find(a) for a in specs}
    assert len(roots) == 3  # one group per card so far
    for r in list(roots):
        if lk.find(r) == r:
            lk.register(r, cluster_attributes(lk.clusters[r], ft.accounts), ft.accounts)
    assert len({lk.find(a) for a in specs}) == 1


def test_a_lone_account_joins_a_group_on_its_shared_templates_but_two_lone_accounts_do_not_link():
    from antidistill.monitor.cluster import cluster_attributes, group_probe_attributes

    meta = {"signup_at": "2026-01-04T10:00:00", "signup_source": "web"}
    prompt = "Instruction: write a tutorial about the subject below, in depth."
    specs = {
        f"m{i}": {
            "prompt": prompt,
            "addr": f"203.0.{i}.9",
            "ua": f"ua-{i}",
            "meta": {**meta, "payment_fingerprint": "pf_1"},
        }
        for i in range(3)
    }
    specs |= {
        "lone1": {"prompt": prompt, "addr": "198.51.100.1", "ua": "x", "meta": meta},
        "lone2": {"prompt": prompt, "addr": "192.0.2.200", "ua": "y", "meta": meta},
    }
    lk, ft = run(specs)
    assert lk.find("lone1") != lk.find("lone2") and lk.find("lone1") != lk.find("m0")
    assert lk.probe("lone1", group_probe_attributes(ft.accounts["lone1"]), ft.accounts) == []
    root = lk.find("m0")
    lk.register(root, cluster_attributes(lk.clusters[root], ft.accounts), ft.accounts)
    assert lk.probe("lone1", group_probe_attributes(ft.accounts["lone1"]), ft.accounts)
    assert lk.find("lone1") == lk.find("m0") != lk.find("lone2")


def test_one_prompt_in_a_campaigns_template_and_signup_week_does_not_join_its_group():
    # a new account whose first prompt happens to match a campaign template, signed up in the campaign's burst:
    # one prompt is not a habit; the same account sending the template again joins
    from antidistill.monitor.cluster import cluster_attributes, group_probe_attributes

    meta = {"signup_at": "2026-01-04T10:00:00", "signup_source": "web"}
    prompt = "Instruction: write a tutorial about the subject below, in depth."
    specs = {
        f"m{i}": {
            "prompt": prompt,
            "addr": f"203.0.{i}.9",
            "ua": f"ua-{i}",
            "meta": {**meta, "payment_fingerprint": "pf_1"},
        }
        for i in range(3)
    }
    lk, ft = run(specs)
    root = lk.find("m0")
    lk.register(root, cluster_attributes(lk.clusters[root], ft.accounts), ft.accounts)
    newcomer = "casual"
    lk.add_account(newcomer)
    ft.add(ExchangeEvent(newcomer, T0 + timedelta(hours=3), prompt=prompt + " hello", account_metadata=meta))
    assert "template" not in attributes(ft.accounts[newcomer])
    assert lk.probe(newcomer, group_probe_attributes(ft.accounts[newcomer]), ft.accounts) == []
    assert lk.register(newcomer, attributes(ft.accounts[newcomer]), ft.accounts) == []
    ft.add(ExchangeEvent(newcomer, T0 + timedelta(hours=4), prompt=prompt + " again", account_metadata=meta))
    assert lk.probe(newcomer, group_probe_attributes(ft.accounts[newcomer]), ft.accounts)
    assert lk.find(newcomer) == root


def test_a_group_links_on_the_datacenter_prefixes_its_members_mainly_use_not_on_proxy_spread():
    from antidistill.monitor.cluster import cluster_attributes, group_probe_attributes

    meta = {"signup_at": "2026-01-04T10:00:00", "payment_fingerprint": "pf_9"}
    ft, lk = FeatureTracker(), Linker()
    for i in range(6):  # three members on a datacenter /24, three behind a residential proxy (a new /24 each time)
        aid = f"m{i}"
        lk.add_account(aid)
        for j in range(8):
            addr = f"203.0.113.{10 + i}" if i < 3 else f"{60 + i}.{j * 7 % 250}.{j}.9"
            ft.add(
                ExchangeEvent(
                    aid,
                    T0 + timedelta(minutes=10 * j + i),
                    prompt=f"note {i} {j} on item {j * i}",
                    client_addr=addr,
                    account_metadata=meta,
                )
            )
        lk.register(aid, attributes(ft.accounts[aid]), ft.accounts)
    root = lk.find("m0")
    attrs = cluster_attributes(lk.clusters[root], ft.accounts)
    assert attrs["group_prefix"] == ["203.0.113.0/24"]
    lk.register(root, attrs, ft.accounts)
    # a newcomer in the same datacenter range who signed up in the same burst joins the group
    lk.add_account("new")
    for j in range(3):
        ft.add(
            ExchangeEvent(
                "new",
                T0 + timedelta(hours=2, minutes=j),
                prompt=f"hello {j}",
                client_addr="203.0.113.200",
                account_metadata={"signup_at": "2026-01-05T09:00:00"},
            )
        )
    assert lk.probe("new", group_probe_attributes(ft.accounts["new"]), ft.accounts)
    assert lk.find("new") == root


def test_attributes_read_the_kept_slots_as_timing_signature_computes_them():
    from antidistill.monitor.cluster import timing_signature

    ft = FeatureTracker()
    for i in range(300):
        # bursts in a few slots, then a dense stretch: the signature appears, then goes
        at = T0 + timedelta(minutes=(i // 30) * 180 + i % 30 if i < 150 else 1500 + 11 * i)
        acct = ft.add(ExchangeEvent("s", at, prompt=f"q {i}"))
        got = attributes(acct).get("timing")
        want = timing_signature(acct.window)
        assert got == ([want] if want else None), i


def _population(benign: int, hydra: int, n: int = 6) -> tuple[Linker, FeatureTracker]:
    """``benign`` accounts on their own networks sharing a common SDK's user agent, signup day and source, and a
    ``hydra`` whose members share only a rare network prefix and an odd user agent (no prompt text: no templates)."""
    specs = {
        f"b{i}": (f"10.{i // 200}.{i % 200}.7", "OpenAI/Python 1.40.0", {"signup_at": "2026-01-05T09:00:00"})
        for i in range(benign)
    }
    for spec in specs.values():
        spec[2]["signup_source"] = "api"
    specs |= {f"h{i}": (f"203.0.113.{10 + i}", "odd-scraper/0.3", {}) for i in range(hydra)}
    ft, lk = FeatureTracker(), Linker()
    for i in range(n):
        for aid, (addr, ua, meta) in specs.items():
            at = T0 + timedelta(minutes=i * 7 + sum(map(ord, aid)) % 5)
            ft.add(ExchangeEvent(aid, at, client_addr=addr, user_agent=ua, account_metadata=meta))
            lk.add_account(aid)
    for _ in range(2):  # twice: the monitor registers an account again at its checkpoints, as rarities settle
        for aid in specs:
            lk.register(aid, attributes(ft.accounts[aid]), ft.accounts)
    return lk, ft


def test_a_hydra_sharing_a_rare_prefix_and_user_agent_links_and_the_common_sdk_crowd_does_not():
    lk, ft = _population(300, 12)
    hydra = [a for a in ft.accounts if a.startswith("h")]
    assert len({lk.find(h) for h in hydra}) == 1
    c = lk.cluster_of("h0")
    assert c is not None and sorted(c.members) == sorted(hydra)
    assert lk.linked_by(c) == ["rare network prefix and user agent"]
    # the crowd shares a user agent, a signup day and a source (0.25 + 0.3 + 0.15 at the fixed weights): common,
    # so they weigh next to nothing, and nobody is linked
    benign = [a for a in ft.accounts if a.startswith("b")]
    assert all(lk.cluster_of(b) is None for b in benign)
    assert lk.rarity("agent", "openai/python 1.40.0") == 0.0
    assert lk.rarity("signup_day", "2026-01-05") == 0.0
    assert lk.rarity("prefix", "203.0.113.0/24") == 1.0
    assert lk.rarity(PAIR_KIND, "203.0.113.0/24\x00odd-scraper/0.3") == 1.0


def test_without_rarity_the_same_hydra_does_not_link(monkeypatch):
    from antidistill.monitor import cluster

    monkeypatch.setattr(cluster, "RARITY_LEAST", 10**9)  # the fixed weights: prefix 0.4 + user agent 0.25
    lk, _ = _population(300, 12)
    assert lk.cluster_of("h0") is None and not lk.clusters


def test_a_common_user_agent_alone_links_nothing_and_a_rare_pair_needs_a_group():
    lk = Linker()
    for i in range(400):
        lk.add_account(f"a{i}")
        lk.register(f"a{i}", {"agent": ["openai/python 1.40.0"], "signup": ["api"], "prefix": [f"10.0.{i}.0/24"]})
    assert not lk.clusters
    # two accounts (neighbours, say) sharing a rare prefix and a rare user agent are not a group
    for a in ("a1", "a2"):
        lk.register(a, {"agent": ["odd-scraper/0.3"], "signup": ["api"], "prefix": ["203.0.113.0/24"]})
    assert lk.find("a1") != lk.find("a2")
    # five are
    for a in ("a3", "a4", "a5"):
        lk.register(a, {"agent": ["odd-scraper/0.3"], "signup": ["api"], "prefix": ["203.0.113.0/24"]})
    for a in ("a1", "a2", "a3", "a4"):  # the first re-register (at their next checkpoint) with the pair's weight now
        lk.register(a, {"agent": ["odd-scraper/0.3"], "signup": ["api"], "prefix": ["203.0.113.0/24"]})
    assert len({lk.find(f"a{i}") for i in range(1, 6)}) == 1 and lk.find("a6") != lk.find("a1")


def test_a_groups_registration_under_its_root_leaves_the_roots_counts_alone():
    lk = Linker()
    own = {"agent": ["odd-scraper/0.3"], "prefix": ["203.0.113.0/24"]}
    for a in ("r", "s"):
        lk.add_account(a)
        lk.register(a, own)
    before = (dict(lk.holders), dict(lk.kind_holders))
    lk.register("r", {"group_template": ["7"], "group_signup_day": ["b1"]})
    assert (dict(lk.holders), dict(lk.kind_holders)) == before
