"""The synthetic streaming company: determinism, schema fit, timing and the shape of activity."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from hopcast.demo.company import (
    LATE_MAX_US,
    LIVE_DURATION_US,
    LIVE_PRE_ROLL_US,
    Company,
    CompanyConfig,
)
from hopcast.durations import DAY, HOUR, MINUTE
from hopcast.errors import ConfigError
from hopcast.graph.mutations import EdgeUpsert, Mutation, NodeUpsert
from hopcast.graph.schema import Schema

#: 2023-11-14T22:13:20Z, a fixed start so that tests never depend on the clock.
START = 1_700_000_000_000_000
#: Activity events in the shared sample: enough for every rare behaviour (late, duplicate, live)
#: to show up hundreds of times, small enough to generate in well under a second.
N = 200_000
#: The shared sample covers one day, so every live event broadcasts once in it.
WINDOW = DAY
HEAVY = CompanyConfig(heavy_accounts=5, heavy_share=0.1)

INTERACTIONS = {"started_watching", "browsed", "streamed_from", "plays", "watched_live", "supports"}


def _edges(mutations: list[Mutation]) -> list[EdgeUpsert]:
    return [m for m in mutations if isinstance(m, EdgeUpsert)]


@pytest.fixture(scope="module")
def company() -> Company:
    """A company whose ``activity`` has produced ``stream`` (use it for accessors only)."""
    return Company(HEAVY, START)


@pytest.fixture(scope="module")
def stream(company: Company) -> list[Mutation]:
    return list(company.activity(N, START, START + WINDOW))


@pytest.fixture(scope="module")
def edges(stream: list[Mutation]) -> list[EdgeUpsert]:
    return _edges(stream)


@pytest.fixture(scope="module")
def fresh(edges: list[EdgeUpsert]) -> list[EdgeUpsert]:
    """The edges of the shared sample without redeliveries (first occurrence of every id)."""
    seen: set[str] = set()
    out = []
    for e in edges:
        if e.id not in seen:
            seen.add(e.id)
            out.append(e)
    return out


# -- determinism and schema --------------------------------------------------------------------


def test_the_same_seed_yields_the_same_mutations() -> None:
    a, b = Company(HEAVY, START), Company(HEAVY, START)
    assert list(a.catalogue()) == list(b.catalogue())
    assert list(a.members()) == list(b.members())
    assert list(a.activity(20_000, START, START + HOUR)) == list(
        b.activity(20_000, START, START + HOUR)
    )
    assert list(a.activity(5_000, START + HOUR, START + 2 * HOUR)) == list(
        b.activity(5_000, START + HOUR, START + 2 * HOUR)
    )


def test_a_different_seed_yields_a_different_company() -> None:
    a = Company(CompanyConfig(seed=1), START)
    b = Company(CompanyConfig(seed=2), START)
    assert list(a.members()) != list(b.members())
    assert list(a.activity(1_000, START, START + HOUR)) != list(
        b.activity(1_000, START, START + HOUR)
    )


def test_catalogue_and_members_are_repeatable_snapshots_at_start_ts(company: Company) -> None:
    catalogue, members = list(company.catalogue()), list(company.members())
    assert catalogue == list(company.catalogue())
    assert members == list(company.members())
    assert {m.ts for m in catalogue + members} == {START}


def test_every_generated_mutation_fits_the_demo_schema(stream: list[Mutation]) -> None:
    schema = Schema.demo()
    small = Company(CompanyConfig(accounts=50, titles=100, seed=3), START)
    sparse = CompanyConfig(accounts=20, titles=30, genres=1, games=0, live_events=0, teams=0)
    bare = Company(sparse, START)
    for source in (
        list(Company(HEAVY, START).catalogue()),
        list(Company(HEAVY, START).members()),
        stream,
        [*small.catalogue(), *small.members(), *small.activity(20_000, START, START + DAY)],
        [*bare.catalogue(), *bare.members(), *bare.activity(2_000, START, START + HOUR)],
    ):
        for m in source:
            schema.validate(m)


def test_idempotency_ids_are_unique_across_snapshots_and_activity_calls() -> None:
    c = Company(CompanyConfig(accounts=100, titles=200), START)
    first = _edges(list(c.activity(5_000, START, START + HOUR)))
    second = list(c.activity(5_000, START + HOUR, START + 2 * HOUR))
    fresh_ids = {e.id for e in first} | {m.id for m in second}
    snapshot_ids = [m.id for m in [*c.catalogue(), *c.members()]]
    assert len(set(snapshot_ids)) == len(snapshot_ids)
    assert not fresh_ids & set(snapshot_ids)
    assert not {e.id for e in first} & {m.id for m in second}


def test_ids_name_the_seed_so_companies_with_different_seeds_never_collide() -> None:
    a = Company(CompanyConfig(accounts=10, titles=20, seed=1), START)
    b = Company(CompanyConfig(accounts=10, titles=20, seed=2), START)
    ids_a = {m.id for m in [*a.catalogue(), *a.members(), *a.activity(500, START, START + 1)]}
    ids_b = {m.id for m in [*b.catalogue(), *b.members(), *b.activity(500, START, START + 1)]}
    assert not ids_a & ids_b


# -- snapshots ---------------------------------------------------------------------------------


def test_the_catalogue_has_every_node_and_genres_for_every_title(company: Company) -> None:
    catalogue = list(company.catalogue())
    nodes = {m.node for m in catalogue if isinstance(m, NodeUpsert)}
    expected = [
        *company.genre_ids(),
        *company.title_ids(),
        *company.game_ids(),
        *company.team_ids(),
        *company.live_event_ids(),
    ]
    assert nodes == set(expected)
    in_genre = {m.src for m in _edges(catalogue) if m.type == "in_genre"}
    assert in_genre == {*company.title_ids(), *company.game_ids(), *company.live_event_ids()}
    featured = [m for m in _edges(catalogue) if m.type == "features"]
    assert {m.src for m in featured} == set(company.live_event_ids())


def test_members_link_every_account_to_its_profiles_and_devices(company: Company) -> None:
    members = list(company.members())
    nodes = {m.node for m in members if isinstance(m, NodeUpsert)}
    assert nodes == {*company.account_ids(), *company.profile_ids(), *company.device_ids()}
    links = _edges(members)
    has_profile = {(m.src, m.dst) for m in links if m.type == "has_profile"}
    logged_in = {(m.src, m.dst) for m in links if m.type == "logged_in_from"}
    for account in company.account_ids():
        assert 1 <= len(company.profiles_of(account)) <= 5
        assert 1 <= len(company.devices_of(account)) <= 4
        assert {(account, p) for p in company.profiles_of(account)} <= has_profile
        assert {(account, d) for d in company.devices_of(account)} <= logged_in
    assert len(has_profile) == len(company.profile_ids())
    assert len(logged_in) == len(company.device_ids())


def test_kids_profiles_are_flagged_in_their_props(company: Company) -> None:
    kids = {m.node for m in company.members() if isinstance(m, NodeUpsert) and m.props.get("kids")}
    assert kids == set(company.kids_profile_ids())
    assert kids


# -- timing ------------------------------------------------------------------------------------


def test_activity_yields_exactly_n_interaction_edges_within_the_window(
    stream: list[Mutation], edges: list[EdgeUpsert]
) -> None:
    assert len(edges) == N
    assert {e.type for e in edges} == INTERACTIONS
    assert all(START <= m.ts < START + WINDOW for m in stream)
    assert all(e.src.startswith("profile:") for e in edges)


def test_activity_is_mostly_in_time_order_with_a_few_late_events(fresh: list[EdgeUpsert]) -> None:
    newest = START
    late = []
    for e in fresh:
        if e.ts < newest:
            late.append(newest - e.ts)
        newest = max(newest, e.ts)
    assert 0.001 * N < len(late) < 0.02 * N
    assert max(late) <= LATE_MAX_US


def test_a_duplicate_repeats_an_earlier_edge_with_the_same_id_and_ts(
    edges: list[EdgeUpsert],
) -> None:
    by_id: dict[str, EdgeUpsert] = {}
    duplicates = 0
    for e in edges:
        if e.id in by_id:
            duplicates += 1
            assert by_id[e.id] == e
        by_id[e.id] = e
    assert 0 < duplicates < 0.01 * N


def test_node_updates_are_interleaved_in_time_order_and_do_not_count_towards_n(
    stream: list[Mutation],
) -> None:
    updates = [m for m in stream if isinstance(m, NodeUpsert)]
    assert updates
    assert len(stream) == N + len(updates)
    kinds = {m.node.partition(":")[0] for m in updates}
    assert kinds == {"device", "live_event"}
    assert [m.ts for m in updates] == sorted(m.ts for m in updates)


def test_successive_calls_continue_the_stream() -> None:
    c = Company(CompanyConfig(accounts=200, titles=300), START)
    first = list(c.activity(3_000, START, START + HOUR))
    second = list(c.activity(3_000, START + HOUR, START + 2 * HOUR))
    assert first != second
    assert len(_edges(second)) == 3_000
    assert all(START + HOUR <= m.ts < START + 2 * HOUR for m in second)


def test_activity_of_zero_events_yields_nothing() -> None:
    assert list(Company(CompanyConfig(accounts=5, titles=5), START).activity(0, START, START)) == []


@pytest.mark.parametrize(("n", "start", "end"), [(-1, START, START + 1), (10, START, START)])
def test_activity_rejects_a_negative_n_or_an_empty_window(n: int, start: int, end: int) -> None:
    with pytest.raises(ValueError):
        Company(CompanyConfig(accounts=5, titles=5), START).activity(n, start, end)


# -- realism -----------------------------------------------------------------------------------


def test_a_few_titles_get_most_views(company: Company, fresh: list[EdgeUpsert]) -> None:
    views = Counter(e.dst for e in fresh if e.type == "started_watching")
    top = sum(count for _, count in views.most_common(len(company.title_ids()) // 100))
    assert top > 0.3 * sum(views.values())


def test_profile_activity_is_heavy_tailed(company: Company, fresh: list[EdgeUpsert]) -> None:
    heavy = set(company.heavy_profile_ids())
    per_profile = sorted(Counter(e.src for e in fresh if e.src not in heavy).values(), reverse=True)
    top_tenth = sum(per_profile[: len(per_profile) // 10])
    median = per_profile[len(per_profile) // 2]
    assert top_tenth > 0.35 * sum(per_profile)
    assert per_profile[0] > 20 * median


def test_heavy_accounts_get_their_share_of_activity(
    company: Company, fresh: list[EdgeUpsert]
) -> None:
    per_account: Counter[str] = Counter()
    heavy = set(company.heavy_profile_ids())
    for e in fresh:
        if e.src in heavy:
            per_account[e.src.partition(":")[2].partition("-")[0]] += 1
    expected = len(fresh) * HEAVY.heavy_share / HEAVY.heavy_accounts
    assert len(per_account) == HEAVY.heavy_accounts
    assert all(0.9 * expected < count < 1.1 * expected for count in per_account.values())


def test_browsing_is_more_frequent_than_watching(fresh: list[EdgeUpsert]) -> None:
    kinds = Counter(e.type for e in fresh)
    assert kinds["browsed"] > 2 * kinds["started_watching"]


def test_a_watch_usually_follows_a_browse_of_the_same_title(fresh: list[EdgeUpsert]) -> None:
    browsed: set[tuple[str, str]] = set()
    watches = after_browse = 0
    for e in fresh:
        if e.type == "browsed":
            browsed.add((e.src, e.dst))
        elif e.type == "started_watching":
            watches += 1
            after_browse += (e.src, e.dst) in browsed
    assert after_browse > 0.7 * watches


def test_streams_come_from_a_device_of_the_profiles_account(
    company: Company, fresh: list[EdgeUpsert]
) -> None:
    devices = {
        p: set(company.devices_of(a)) for a in company.account_ids() for p in company.profiles_of(a)
    }
    started: set[tuple[str, str]] = set()
    for e in fresh:
        if e.type == "started_watching":
            started.add((e.src, e.dst))
            assert e.props["device"] in devices[e.src]
        elif e.type == "streamed_from":
            assert e.dst in devices[e.src]
            assert (e.src, e.props["title"]) in started
        elif e.type in ("plays", "watched_live"):
            assert e.props["device"] in devices[e.src]


def test_live_events_are_watched_only_around_their_start(stream: list[Mutation]) -> None:
    starts: dict[str, set[int]] = defaultdict(set)
    for live_id, starts_at in Company(HEAVY, START).live_event_starts().items():
        starts[live_id].add(starts_at)
    slack = LATE_MAX_US + 10 * MINUTE  # late delivery, and sessions in progress at the end
    watched = 0
    for m in stream:
        if isinstance(m, NodeUpsert) and "starts_at" in m.props:
            moved_to = m.props["starts_at"]
            assert isinstance(moved_to, int)
            starts[m.node].add(moved_to)
        elif isinstance(m, EdgeUpsert) and m.type == "watched_live":
            watched += 1
            assert m.dst.startswith("live_event:")
            assert any(
                s - LIVE_PRE_ROLL_US - slack <= m.ts < s + LIVE_DURATION_US + slack
                for s in starts[m.dst]
            )
    assert watched > 0.005 * N


def test_live_events_move_to_their_next_start_once_over(company: Company) -> None:
    c = Company(CompanyConfig(accounts=20, titles=20, live_events=2), START)
    before = c.live_event_starts()
    list(c.activity(1_000, START + 3 * DAY, START + 3 * DAY + HOUR))
    after = c.live_event_starts()
    assert all(after[e] > before[e] for e in before)
    assert all((after[e] - before[e]) % DAY == 0 for e in before)


def test_games_are_played_by_a_minority_of_profiles(fresh: list[EdgeUpsert]) -> None:
    active = {e.src for e in fresh}
    players = {e.src for e in fresh if e.type == "plays"}
    assert players
    assert len(players) < 0.3 * len(active)


def test_kids_profiles_only_watch_kids_titles(company: Company, fresh: list[EdgeUpsert]) -> None:
    kids = set(company.kids_profile_ids())
    kids_titles = set(company.kids_title_ids())
    watched = [e for e in fresh if e.src in kids and e.type in ("browsed", "started_watching")]
    assert watched
    assert all(e.dst in kids_titles for e in watched)
    assert {e.type for e in fresh if e.src in kids} <= {
        "browsed",
        "started_watching",
        "streamed_from",
    }


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"accounts": 0},
        {"titles": 0},
        {"genres": 0},
        {"games": -1},
        {"profiles_per_account": (0, 2)},
        {"devices_per_account": (3, 2)},
        {"heavy_accounts": 1001},
        {"heavy_share": 1.5},
        {"heavy_share": 0.1},
        {"accounts": 3, "heavy_accounts": 3, "heavy_share": 0.5},
    ],
)
def test_an_invalid_config_is_rejected(config: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        CompanyConfig(**config)  # type: ignore[arg-type]


def test_a_company_of_heavy_accounts_only_puts_all_activity_on_them() -> None:
    c = Company(CompanyConfig(accounts=2, titles=10, heavy_accounts=2, heavy_share=1.0), START)
    heavy = set(c.heavy_profile_ids())
    assert heavy == set(c.profile_ids())
    assert all(e.src in heavy for e in _edges(list(c.activity(1_000, START, START + HOUR))))
