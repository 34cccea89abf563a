"""A synthetic streaming company: a deterministic source of graph mutations for the demo schema.

:class:`Company` models a video-streaming service with games and live sport (the graph described by
``hopcast/graph/demo_schema.yaml``) and turns it into :mod:`hopcast.graph.mutations`:

* :meth:`Company.catalogue` — genres, titles, games, teams and live events, with their
  ``in_genre`` and ``features`` edges;
* :meth:`Company.members` — accounts, profiles and devices, with ``has_profile`` and
  ``logged_in_from`` edges;
* :meth:`Company.activity` — a stream of member interaction edges (``browsed``,
  ``started_watching``, ``streamed_from``, ``plays``, ``watched_live``, ``supports``) spread over a
  time window, plus the occasional node update.

Everything is a pure function of the :class:`CompanyConfig` (including its ``seed``), the
``start_ts`` given to the constructor and the sequence of calls made: the module reads no clock and
does no I/O. Times are integer microseconds since the Unix epoch, like everywhere in hopcast.

The activity is shaped to look like a real service, because the graph's behaviour (hot adjacency
lists, skewed reads) depends on it:

* title popularity is Zipf-like: a few titles get most of the views;
* profiles have heavy-tailed activity levels (Pareto weights), and ``heavy_accounts`` can be made
  extremely active on purpose, to give a benchmark members with 100k+ edges;
* members act in *sessions*, several of which run concurrently and interleave in the stream: a
  session browses one to four titles and often starts watching one of them (so browsing is more
  frequent than watching and a watch usually follows a browse of the same title), streamed from
  one of the account's devices;
* kids profiles only see titles in kids genres; only a minority of profiles play games;
  ``watched_live`` happens only while a live event is on (a few minutes before its ``starts_at``
  until it ends); live events recur daily and are moved to their next ``starts_at`` by a node
  update once a broadcast is over;
* delivery is imperfect, as with real clients: a few events arrive late (out of order by up to a
  few minutes) and a few are delivered twice (the same mutation, same ``id`` and ``ts``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeAlias, TypeVar

from hopcast.durations import DAY, HOUR, MINUTE, SECOND
from hopcast.errors import ConfigError
from hopcast.graph.mutations import EdgeUpsert, Mutation, NodeUpsert, Props

# -- shape of the catalogue --------------------------------------------------------------------

#: Genre names, in the order genres are created (``CompanyConfig.genres`` takes a prefix). Kids
#: genres come early so that even a small catalogue has titles for kids profiles; further genres
#: are named ``genre_<n>``.
GENRE_NAMES = (
    "drama",
    "comedy",
    "kids",
    "action",
    "documentary",
    "sports",
    "family",
    "thriller",
    "animation",
    "romance",
    "crime",
    "sci_fi",
    "horror",
    "reality",
    "anime",
    "fantasy",
    "mystery",
    "music",
    "history",
    "stand_up",
)
#: Genres whose titles kids profiles watch (the maturity filter of a real kids profile).
KIDS_GENRES = frozenset({"kids", "family", "animation"})
#: Genre of every live event (they are all sport broadcasts); the first genre if there is none.
LIVE_GENRE = "sports"
#: A title has 1..MAX_GENRES_PER_TITLE genres: real catalogues tag a title with a few genres.
MAX_GENRES_PER_TITLE = 3
#: Zipf exponent of title popularity. 1.0 is the classic shape of media consumption: with 2000
#: titles the top 1% (20 titles) gets about 45% of the views.
TITLE_ZIPF_EXPONENT = 1.0
#: Games are less concentrated than titles (a smaller catalogue, played for longer).
GAME_ZIPF_EXPONENT = 0.8
#: Share of titles that are movies rather than shows (documentaries follow their genre).
MOVIE_SHARE = 0.6
#: Mean age of a title in years (exponential): catalogues lean towards recent releases.
MEAN_TITLE_AGE_YEARS = 8.0
#: No title is older than this year, however long the exponential tail.
OLDEST_TITLE_YEAR = 1930
#: Sports of teams and live events; team ``t`` and live event ``e`` play ``SPORTS[i % 5]``.
SPORTS = ("football", "basketball", "tennis", "boxing", "cricket")
#: Teams featured in one live event (a match has two sides).
TEAMS_PER_LIVE_EVENT = 2
#: Platforms a game runs on.
GAME_PLATFORMS = ("mobile", "tv", "cloud")

#: Words for synthetic titles, games, teams and profile names (cosmetic only).
_ADJECTIVES = (
    "Silent",
    "Golden",
    "Broken",
    "Hidden",
    "Last",
    "Crimson",
    "Electric",
    "Frozen",
    "Wild",
    "Midnight",
    "Lost",
    "Bright",
    "Iron",
    "Secret",
    "Endless",
    "Little",
)
_NOUNS = (
    "Harbor",
    "Kingdom",
    "Signal",
    "Garden",
    "Frontier",
    "Orchard",
    "Empire",
    "River",
    "Detective",
    "Summer",
    "Machine",
    "Island",
    "Witness",
    "Circus",
    "Engine",
    "Forest",
)
_CITIES = ("North", "Bay", "River", "Capital", "Harbor", "Mountain", "Lake", "Coast")
_MASCOTS = ("Lions", "Rockets", "Wolves", "Comets", "Giants", "Falcons", "Sharks", "Bears")
_FIRST_NAMES = (
    "Alex",
    "Sam",
    "Maria",
    "Kenji",
    "Ana",
    "Liam",
    "Priya",
    "Noah",
    "Sofia",
    "Lucas",
    "Emma",
    "Ravi",
    "Chloe",
    "Mateo",
    "Yuki",
    "Lena",
)

# -- shape of the member base ------------------------------------------------------------------

#: (country, language, weight): the rough shape of a global service's member base.
COUNTRIES = (
    ("US", "en", 40),
    ("BR", "pt", 10),
    ("IN", "hi", 8),
    ("GB", "en", 8),
    ("DE", "de", 7),
    ("FR", "fr", 6),
    ("MX", "es", 6),
    ("CA", "en", 6),
    ("JP", "ja", 5),
    ("ES", "es", 4),
)
#: (plan, weight): most members are on the middle plan.
PLANS = (("basic", 3), ("standard", 5), ("premium", 2))
#: Members are up to this old (signup_ts is before start_ts by up to this much).
MAX_MEMBERSHIP_US = 5 * 365 * DAY
#: Share of profiles after an account's first (the owner's) that are kids profiles.
KIDS_PROFILE_SHARE = 0.25
#: Share of language settings that differ from the account's country (expats, learners).
ENGLISH_OVERRIDE_SHARE = 0.1
#: Share of non-kids profiles that play games at all: gaming is a minority activity.
GAMER_SHARE = 0.15
#: Pareto shape of profile activity levels: α = 1.3 has a finite mean but a long tail (weights
#: start at 1, the median is 1.7 and one profile in 400 reaches PROFILE_ACTIVITY_CAP).
PROFILE_ACTIVITY_PARETO_ALPHA = 1.3
#: Cap of a profile's Pareto weight (the minimum is 1): without it the single most active of a few
#: thousand ordinary profiles can take a few percent of all activity, more than a real member ever
#: does; heavy accounts are the way to ask for extreme members.
PROFILE_ACTIVITY_CAP = 100.0
#: Share of a profile's sessions on its own usual device (the rest: any of the account's).
PRIMARY_DEVICE_SHARE = 0.7
#: Share of logins from another country than the account's (travel, VPNs).
FOREIGN_LOGIN_SHARE = 0.05
#: (device type, weight, operating systems, bitrate ladder in kbps). Ladders have
#: 2**LADDER_BITS rungs so a rung is drawn with random bits; TVs and consoles stream highest.
DEVICE_TYPES = (
    ("tv", 35, ("tizen", "webos", "android_tv", "tvos"), (4300, 5800, 8000, 16000)),
    ("mobile", 30, ("ios", "android"), (750, 1050, 1750, 2350)),
    ("tablet", 10, ("ipados", "android"), (1050, 1750, 2350, 3000)),
    ("web", 15, ("chrome", "safari", "firefox", "edge"), (1750, 2350, 3000, 4300)),
    ("console", 10, ("playstation", "xbox"), (4300, 5800, 8000, 16000)),
)
#: App versions are ``APP_MAJOR.minor.patch``; devices start on one of the last
#: APP_INITIAL_MINORS minors and updates move them to ever newer patch releases of the latest.
APP_MAJOR = 8
APP_LATEST_MINOR = 120
APP_INITIAL_MINORS = 10

# -- shape of the activity stream --------------------------------------------------------------

#: Concurrent sessions whose events interleave in the stream (a power of two: a slot is drawn
#: with POOL_BITS random bits). 64 is enough for neighbouring events to be from different members.
POOL_BITS = 6
#: Concurrent sessions per heavy account (it has a handful of profiles, each on several devices).
HEAVY_POOL_BITS = 3
#: A browsing session browses 1..2**BROWSE_BITS titles (drawn with random bits; mean 2.5).
BROWSE_BITS = 2
#: Share of browsing sessions that go on to start watching a browsed title. With 2.5 browses per
#: session this makes browsing about five times as frequent as watching.
WATCH_AFTER_BROWSE_SHARE = 0.5
#: Share of title sessions that start watching straight away (autoplay, "continue watching" from a
#: notification): the watches that do not follow a browse.
DIRECT_WATCH_SHARE = 0.1
#: Share of watch starts that begin at 0 s; the rest resume somewhere in the title.
WATCH_FROM_START_SHARE = 0.6
#: Resume positions are uniform below this (a feature film's length).
MAX_RESUME_POSITION_S = 2 * 3600
#: Share of an adult profile's sessions that look at live events (they become title sessions when
#: nothing is on or coming up).
LIVE_SESSION_SHARE = 0.08
#: Share of an adult profile's sessions that follow a team outside a broadcast.
SUPPORT_SESSION_SHARE = 0.01
#: Share of a gamer's sessions spent playing (only gamers play).
GAME_SESSION_SHARE = 0.3
#: A game session lasts 1..MAX_GAME_MINUTES minutes.
MAX_GAME_MINUTES = 120
#: Share of live viewers who browse the event's page before tuning in (others come from a push).
BROWSE_BEFORE_LIVE_SHARE = 0.5
#: Share of live viewers who then follow one of the teams that played.
SUPPORT_AFTER_LIVE_SHARE = 0.1
#: Live events recur with this period (a nightly sports slot), so every window has broadcasts.
LIVE_PERIOD_US = DAY
#: Viewers tune in up to this long before ``starts_at`` (pre-game shows).
LIVE_PRE_ROLL_US = 10 * MINUTE
#: A broadcast lasts this long after ``starts_at``.
LIVE_DURATION_US = 2 * HOUR
#: Members browse an event's page up to this long before it starts (promotion on the home page).
LIVE_PROMO_US = 6 * HOUR
#: The first broadcast starts this long after the company's start_ts, the others are spread over
#: one LIVE_PERIOD_US after it.
LIVE_FIRST_START_US = 5 * MINUTE
#: Share of activity events delivered late (mobile clients buffering while offline).
LATE_SHARE = 0.005
#: A late event is out of order by 1 µs..LATE_MAX_US ("a few minutes").
LATE_MAX_US = 5 * MINUTE
#: Share of activity events that are a redelivery of an earlier one (at-least-once transport).
DUPLICATE_SHARE = 0.002
#: A duplicate re-emits one of the last 2**DUPLICATE_WINDOW_BITS edges of the same call.
DUPLICATE_WINDOW_BITS = 12
#: Share of activity events followed by a device app update (a NodeUpsert of ``app_version``).
DEVICE_UPDATE_SHARE = 0.0005
#: Rungs of a bitrate ladder, as a power of two (a rung is drawn with this many random bits).
LADDER_BITS = 2
#: Browse rows (2**ROW_BITS of them) and pages (2**PAGE_BITS): drawn with that many random bits.
ROW_BITS = 3
PAGE_BITS = 2
BROWSE_ROWS = (
    "trending_now",
    "top_10",
    "because_you_watched",
    "continue_watching",
    "new_releases",
    "my_list",
    "genre_row",
    "search_results",
)
BROWSE_PAGES = ("home", "search", "title_details", "genre")
#: Where a member starts following a team, outside a broadcast.
SUPPORT_SOURCES = ("onboarding", "search", "title_page")
#: A timestamp later than any real one (2**62 µs is about the year 148,000): "no live event ends".
NEVER = 1 << 62

if len(BROWSE_ROWS) != 1 << ROW_BITS or len(BROWSE_PAGES) != 1 << PAGE_BITS:
    raise AssertionError(
        "BROWSE_ROWS and BROWSE_PAGES must have 2**ROW_BITS and 2**PAGE_BITS items"
    )
if any(len(ladder) != 1 << LADDER_BITS for _, _, _, ladder in DEVICE_TYPES):
    raise AssertionError("every bitrate ladder must have 2**LADDER_BITS rungs")

_T = TypeVar("_T")
#: One interaction of a session: (src, edge type, dst, props).
_Step: TypeAlias = tuple[str, str, str, Props]


@dataclass(frozen=True)
class CompanyConfig:
    """Size and shape of a :class:`Company`. Invalid combinations raise :class:`ConfigError`.

    Attributes:
        accounts: number of accounts (>= 1).
        profiles_per_account: inclusive range of profiles per account (1 <= lo <= hi).
        devices_per_account: inclusive range of devices per account (1 <= lo <= hi).
        titles: number of titles (>= 1).
        genres: number of genres (>= 1); the first 20 have real names (see ``GENRE_NAMES``).
        games, live_events, teams: catalogue sizes (>= 0).
        heavy_accounts: the first ``heavy_accounts`` accounts (``account:0``...) are extremely
            active, to give benchmarks members with huge adjacency lists.
        heavy_share: expected fraction of activity events that go to heavy accounts' profiles,
            split evenly between heavy accounts. Needs ``heavy_accounts > 0`` when positive and
            ordinary accounts when below 1.
        seed: seed of every random choice.
    """

    accounts: int = 1000
    profiles_per_account: tuple[int, int] = (1, 5)
    devices_per_account: tuple[int, int] = (1, 4)
    titles: int = 2000
    genres: int = 20
    games: int = 50
    live_events: int = 10
    teams: int = 30
    heavy_accounts: int = 0  # accounts whose profiles are extremely active (skew for benchmarks)
    heavy_share: float = 0.0  # fraction of all activity events that go to heavy accounts' profiles
    seed: int = 7

    def __post_init__(self) -> None:
        for name in ("accounts", "titles", "genres"):
            if getattr(self, name) < 1:
                raise ConfigError(f"CompanyConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("games", "live_events", "teams", "heavy_accounts"):
            if getattr(self, name) < 0:
                raise ConfigError(f"CompanyConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("profiles_per_account", "devices_per_account"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ConfigError(f"CompanyConfig.{name} must be (lo, hi) with 1 <= lo <= hi")
        if self.heavy_accounts > self.accounts:
            raise ConfigError("CompanyConfig.heavy_accounts cannot exceed accounts")
        if not 0.0 <= self.heavy_share <= 1.0:
            raise ConfigError(
                f"CompanyConfig.heavy_share must be in [0, 1], got {self.heavy_share}"
            )
        if self.heavy_share > 0 and self.heavy_accounts == 0:
            raise ConfigError("CompanyConfig.heavy_share > 0 needs heavy_accounts > 0")
        if self.heavy_share < 1 and self.heavy_accounts == self.accounts:
            raise ConfigError(
                "CompanyConfig.heavy_share < 1 needs some accounts that are not heavy"
            )


class _Alias(Generic[_T]):
    """Walker/Vose alias table: draws ``items`` with probability proportional to ``weights``.

    ``draw(u)`` maps one uniform ``u`` in [0, 1) to an item in O(1); the construction is
    deterministic (no randomness), so the same inputs always give the same table.
    """

    __slots__ = ("_alias", "_keep", "_n", "_own")

    def __init__(self, items: Sequence[_T], weights: Sequence[float]) -> None:
        n = len(items)
        if n == 0 or len(weights) != n:
            raise ValueError("an alias table needs as many weights as items, and at least one")
        total = float(sum(weights))
        scaled = [w * n / total for w in weights]
        keep = [1.0] * n
        alias = list(range(n))
        small = [i for i, s in enumerate(scaled) if s < 1.0]
        large = [i for i, s in enumerate(scaled) if s >= 1.0]
        while small and large:
            s, g = small.pop(), large.pop()
            keep[s] = scaled[s]
            alias[s] = g
            scaled[g] -= 1.0 - scaled[s]
            (small if scaled[g] < 1.0 else large).append(g)
        self._n = n
        self._keep = keep
        self._own = list(items)
        self._alias = [items[a] for a in alias]

    def draw(self, u: float) -> _T:
        """Return the item that the uniform ``u`` in [0, 1) selects."""
        x = u * self._n
        k = int(x)
        return self._own[k] if x - k < self._keep[k] else self._alias[k]


def _zipf_weights(n: int, exponent: float, rng: random.Random) -> list[float]:
    """Zipf weights ``1 / rank**exponent`` for ``n`` items, ranks shuffled by ``rng``."""
    ranks = list(range(1, n + 1))
    rng.shuffle(ranks)
    return [1.0 / r**exponent for r in ranks]


class Company:
    """A deterministic synthetic streaming company (see the module docstring).

    The world (catalogue structure, members, popularity, activity levels) is built in the
    constructor from ``config.seed``. :meth:`catalogue` and :meth:`members` are snapshots: every
    call returns the same mutations, all at ``start_ts``. :meth:`activity` continues one stream:
    successive calls resume the members' sessions and the random sequence where the previous call
    stopped, so the output is determined by the seed and the sequence of calls.
    """

    def __init__(self, config: CompanyConfig, start_ts: int) -> None:
        """Build the world of ``config`` as it is at ``start_ts`` (µs since the epoch)."""
        self.config = config
        self.start_ts = start_ts
        self._seed = config.seed
        self._activity_calls = 0
        self._rng = random.Random(f"{config.seed}:activity")
        world = random.Random(f"{config.seed}:world")
        self._build_catalogue(world)
        self._build_members(world)
        # Sessions in progress, by slot (each a list of steps, next step last).
        self._pool: list[list[_Step]] = [[] for _ in range(1 << POOL_BITS)]
        self._heavy_pools: list[list[list[_Step]]] = [
            [[] for _ in range(1 << HEAVY_POOL_BITS)] for _ in range(config.heavy_accounts)
        ]

    # -- construction ------------------------------------------------------------------------

    def _build_catalogue(self, rng: random.Random) -> None:
        cfg = self.config
        self._genre_names = [
            GENRE_NAMES[g] if g < len(GENRE_NAMES) else f"genre_{g}" for g in range(cfg.genres)
        ]
        self._genre_ids = [f"genre:{name}" for name in self._genre_names]
        kids_genres = {g for g, name in enumerate(self._genre_names) if name in KIDS_GENRES}

        self._title_ids = [f"title:{t}" for t in range(cfg.titles)]
        self._title_genres: list[tuple[int, ...]] = []
        for _ in range(cfg.titles):
            k = rng.randint(1, min(MAX_GENRES_PER_TITLE, cfg.genres))
            self._title_genres.append(tuple(rng.sample(range(cfg.genres), k)))
        title_weights = _zipf_weights(cfg.titles, TITLE_ZIPF_EXPONENT, rng)
        self._titles = _Alias(self._title_ids, title_weights)
        kids = [t for t, gs in enumerate(self._title_genres) if kids_genres.intersection(gs)]
        if not kids:  # a catalogue without kids genres: kids profiles see everything
            kids = list(range(cfg.titles))
        self._kids_title_ids = [self._title_ids[t] for t in kids]
        self._kids_titles = _Alias(self._kids_title_ids, [title_weights[t] for t in kids])

        self._game_ids = [f"game:{g}" for g in range(cfg.games)]
        self._game_genres = [rng.randrange(cfg.genres) for _ in range(cfg.games)]
        self._games: _Alias[str] | None = None
        if cfg.games:
            self._games = _Alias(self._game_ids, _zipf_weights(cfg.games, GAME_ZIPF_EXPONENT, rng))

        self._team_ids = [f"team:{t}" for t in range(cfg.teams)]
        teams_by_sport: dict[str, list[str]] = {sport: [] for sport in SPORTS}
        for t, team_id in enumerate(self._team_ids):
            teams_by_sport[SPORTS[t % len(SPORTS)]].append(team_id)

        live_genre = self._genre_names.index(LIVE_GENRE) if LIVE_GENRE in self._genre_names else 0
        self._live_genre = live_genre
        self._live_ids = [f"live_event:{e}" for e in range(cfg.live_events)]
        self._live_starts = [
            self.start_ts + LIVE_FIRST_START_US + e * LIVE_PERIOD_US // cfg.live_events
            for e in range(cfg.live_events)
        ]
        self._live_teams: list[tuple[str, ...]] = []
        for e in range(cfg.live_events):
            sides = teams_by_sport[SPORTS[e % len(SPORTS)]]
            self._live_teams.append(tuple(rng.sample(sides, min(TEAMS_PER_LIVE_EVENT, len(sides)))))

    def _build_members(self, rng: random.Random) -> None:
        cfg = self.config
        device_type_weights = [w for _, w, _, _ in DEVICE_TYPES]
        self._account_ids = [f"account:{a}" for a in range(cfg.accounts)]
        self._account_profiles: list[range] = []
        self._account_devices: list[range] = []
        self._profile_ids: list[str] = []
        self._profile_kids: list[bool] = []
        self._profile_gamer: list[bool] = []
        self._profile_devices: list[tuple[int, ...]] = []  # usual device first
        self._device_ids: list[str] = []
        self._device_types: list[int] = []  # index into DEVICE_TYPES
        weights: list[float] = []
        for a in range(cfg.accounts):
            first_device = len(self._device_ids)
            n_devices = rng.randint(*cfg.devices_per_account)
            for d in range(n_devices):
                self._device_ids.append(f"device:{a}-{d}")
                kind = rng.choices(range(len(DEVICE_TYPES)), device_type_weights)[0]
                self._device_types.append(kind)
            devices = tuple(range(first_device, first_device + n_devices))
            first_profile = len(self._profile_ids)
            n_profiles = rng.randint(*cfg.profiles_per_account)
            for p in range(n_profiles):
                kids = p > 0 and rng.random() < KIDS_PROFILE_SHARE
                self._profile_ids.append(f"profile:{a}-{p}")
                self._profile_kids.append(kids)
                self._profile_gamer.append(not kids and rng.random() < GAMER_SHARE)
                usual = rng.choice(devices)
                self._profile_devices.append((usual, *devices))
                weight = rng.paretovariate(PROFILE_ACTIVITY_PARETO_ALPHA)
                weights.append(min(weight, PROFILE_ACTIVITY_CAP))
            self._account_profiles.append(range(first_profile, first_profile + n_profiles))
            self._account_devices.append(range(first_device, first_device + n_devices))
        self._app_build = 0  # patch number of the latest app release pushed by activity()
        self._profile_index: dict[str, int] | None = None  # built on first use

        heavy_end = self._account_profiles[cfg.heavy_accounts - 1].stop if cfg.heavy_accounts else 0
        self._heavy_profiles: list[range] = self._account_profiles[: cfg.heavy_accounts]
        normal = range(heavy_end, len(self._profile_ids))
        self._normal_profiles: _Alias[int] | None = None
        if len(normal):
            self._normal_profiles = _Alias(normal, weights[heavy_end:])

    # -- accessors ---------------------------------------------------------------------------

    def account_ids(self) -> list[str]:
        """Ids of all accounts, ``account:0`` first."""
        return list(self._account_ids)

    def heavy_account_ids(self) -> list[str]:
        """Ids of the heavy accounts (the first ``config.heavy_accounts``)."""
        return self._account_ids[: self.config.heavy_accounts]

    def profile_ids(self) -> list[str]:
        """Ids of all profiles, grouped by account."""
        return list(self._profile_ids)

    def profiles_of(self, account_id: str) -> list[str]:
        """Ids of the profiles of one account. Raises KeyError for an unknown account."""
        return [
            self._profile_ids[p] for p in self._account_profiles[self._account_index(account_id)]
        ]

    def devices_of(self, account_id: str) -> list[str]:
        """Ids of the devices of one account. Raises KeyError for an unknown account."""
        return [self._device_ids[d] for d in self._account_devices[self._account_index(account_id)]]

    def heavy_profile_ids(self) -> list[str]:
        """Ids of the heavy accounts' profiles."""
        return [self._profile_ids[p] for r in self._heavy_profiles for p in r]

    def kids_profile_ids(self) -> list[str]:
        """Ids of the kids profiles (they only watch titles in kids genres)."""
        return [
            pid for pid, kids in zip(self._profile_ids, self._profile_kids, strict=True) if kids
        ]

    def device_ids(self) -> list[str]:
        """Ids of all devices, grouped by account."""
        return list(self._device_ids)

    def title_ids(self) -> list[str]:
        """Ids of all titles (``title:0``...; popularity ranks are shuffled, not by id)."""
        return list(self._title_ids)

    def kids_title_ids(self) -> list[str]:
        """Ids of the titles kids profiles watch (those in a kids genre)."""
        return list(self._kids_title_ids)

    def genre_ids(self) -> list[str]:
        """Ids of all genres (``genre:<name>``)."""
        return list(self._genre_ids)

    def game_ids(self) -> list[str]:
        """Ids of all games."""
        return list(self._game_ids)

    def team_ids(self) -> list[str]:
        """Ids of all teams."""
        return list(self._team_ids)

    def live_event_ids(self) -> list[str]:
        """Ids of all live events."""
        return list(self._live_ids)

    def live_event_starts(self) -> dict[str, int]:
        """Current ``starts_at`` of every live event (moves forward as activity passes it)."""
        return dict(zip(self._live_ids, self._live_starts, strict=True))

    def usual_device_of(self, profile_id: str) -> str:
        """Id of the device a profile uses most. Raises KeyError for an unknown profile."""
        if self._profile_index is None:
            self._profile_index = {pid: p for p, pid in enumerate(self._profile_ids)}
        return self._device_ids[self._profile_devices[self._profile_index[profile_id]][0]]

    def _account_index(self, account_id: str) -> int:
        kind, _, key = account_id.partition(":")
        if kind != "account" or not key.isdigit() or int(key) >= len(self._account_ids):
            raise KeyError(account_id)
        return int(key)

    # -- snapshots ---------------------------------------------------------------------------

    def catalogue(self) -> Iterator[Mutation]:
        """The catalogue at ``start_ts``: genre, title, game, team and live-event nodes, then
        ``in_genre`` edges (titles, games and live events to genres) and ``features`` edges (live
        events to the teams that play). Every call yields the same mutations.
        """
        rng = random.Random(f"{self._seed}:catalogue")
        ts = self.start_ts
        prefix = f"catalogue:{self._seed}:"
        counter = 0
        this_year = datetime.fromtimestamp(ts / SECOND, tz=UTC).year
        for gid, name in zip(self._genre_ids, self._genre_names, strict=True):
            yield NodeUpsert(gid, ts, f"{prefix}{counter}", {"name": name})
            counter += 1
        documentary = (
            self._genre_names.index("documentary") if "documentary" in self._genre_names else -1
        )
        for tid, genres in zip(self._title_ids, self._title_genres, strict=True):
            if genres[0] == documentary:
                kind = "documentary"
            else:
                kind = "movie" if rng.random() < MOVIE_SHARE else "show"
            age = int(rng.expovariate(1.0 / MEAN_TITLE_AGE_YEARS))
            props: Props = {
                "name": f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}",
                "kind": kind,
                "year": max(OLDEST_TITLE_YEAR, this_year - age),
            }
            yield NodeUpsert(tid, ts, f"{prefix}{counter}", props)
            counter += 1
        for gid in self._game_ids:
            props = {
                "name": f"{rng.choice(_NOUNS)} {rng.choice(_NOUNS)}",
                "platform": rng.choice(GAME_PLATFORMS),
            }
            yield NodeUpsert(gid, ts, f"{prefix}{counter}", props)
            counter += 1
        for t, tid in enumerate(self._team_ids):
            props = {
                "name": f"{rng.choice(_CITIES)} {rng.choice(_MASCOTS)}",
                "sport": SPORTS[t % len(SPORTS)],
            }
            yield NodeUpsert(tid, ts, f"{prefix}{counter}", props)
            counter += 1
        for e, (lid, starts_at) in enumerate(zip(self._live_ids, self._live_starts, strict=True)):
            sport = SPORTS[e % len(SPORTS)]
            props = {"name": f"{sport.title()} Night {e}", "sport": sport, "starts_at": starts_at}
            yield NodeUpsert(lid, ts, f"{prefix}{counter}", props)
            counter += 1
        for tid, genres in zip(self._title_ids, self._title_genres, strict=True):
            for g in genres:
                yield EdgeUpsert(tid, "in_genre", self._genre_ids[g], ts, f"{prefix}{counter}")
                counter += 1
        for gid, g in zip(self._game_ids, self._game_genres, strict=True):
            yield EdgeUpsert(gid, "in_genre", self._genre_ids[g], ts, f"{prefix}{counter}")
            counter += 1
        live_genre = self._genre_ids[self._live_genre]
        for lid, teams in zip(self._live_ids, self._live_teams, strict=True):
            yield EdgeUpsert(lid, "in_genre", live_genre, ts, f"{prefix}{counter}")
            counter += 1
            for team in teams:
                yield EdgeUpsert(lid, "features", team, ts, f"{prefix}{counter}")
                counter += 1

    def members(self) -> Iterator[Mutation]:
        """The member base at ``start_ts``: per account, its account, profile and device nodes,
        then its ``has_profile`` and ``logged_in_from`` edges. Every call yields the same mutations.
        """
        rng = random.Random(f"{self._seed}:members")
        ts = self.start_ts
        prefix = f"members:{self._seed}:"
        counter = 0
        country_weights = [w for _, _, w in COUNTRIES]
        plan_names = [p for p, _ in PLANS]
        plan_weights = [w for _, w in PLANS]
        for a, aid in enumerate(self._account_ids):
            country, language, _ = rng.choices(COUNTRIES, country_weights)[0]
            props: Props = {
                "country": country,
                "plan": rng.choices(plan_names, plan_weights)[0],
                "signup_ts": ts - rng.randrange(MAX_MEMBERSHIP_US),
            }
            yield NodeUpsert(aid, ts, f"{prefix}{counter}", props)
            counter += 1
            profiles = self._account_profiles[a]
            for p in profiles:
                kids = self._profile_kids[p]
                props = {
                    "name": "Kids" if kids else rng.choice(_FIRST_NAMES),
                    "kids": kids,
                    "language": "en" if rng.random() < ENGLISH_OVERRIDE_SHARE else language,
                }
                yield NodeUpsert(self._profile_ids[p], ts, f"{prefix}{counter}", props)
                counter += 1
            devices = self._account_devices[a]
            for d in devices:
                type_name, _, systems, _ = DEVICE_TYPES[self._device_types[d]]
                minor = APP_LATEST_MINOR - rng.randrange(APP_INITIAL_MINORS)
                props = {
                    "device_type": type_name,
                    "os": rng.choice(systems),
                    "app_version": f"{APP_MAJOR}.{minor}.0",
                }
                yield NodeUpsert(self._device_ids[d], ts, f"{prefix}{counter}", props)
                counter += 1
            for p in profiles:
                pid = self._profile_ids[p]
                yield EdgeUpsert(aid, "has_profile", pid, ts, f"{prefix}{counter}")
                counter += 1
            for d in devices:
                ip_country = country
                if rng.random() < FOREIGN_LOGIN_SHARE:
                    ip_country = rng.choice(COUNTRIES)[0]
                props = {"ip_country": ip_country}
                did = self._device_ids[d]
                yield EdgeUpsert(aid, "logged_in_from", did, ts, f"{prefix}{counter}", props)
                counter += 1

    # -- activity ----------------------------------------------------------------------------

    def activity(self, n: int, start_ts: int, end_ts: int) -> Iterator[Mutation]:
        """Stream exactly ``n`` interaction :class:`EdgeUpsert` s over ``[start_ts, end_ts)``.

        Edges are ``browsed``, ``started_watching``, ``streamed_from``, ``plays``,
        ``watched_live`` and ``supports``, all from a profile. Their ``ts`` are spread evenly over
        the window in non-decreasing order, except that about ``LATE_SHARE`` of them are late (ts
        up to ``LATE_MAX_US`` before the stream position, never before ``start_ts``) and about
        ``DUPLICATE_SHARE`` are redeliveries of an edge already yielded by this call (the same
        object: same ``id``, ``ts`` and props). Redeliveries count towards ``n``; every other
        edge has a fresh idempotency id ``act:<seed>:<call>.<i>``. Interleaved
        :class:`NodeUpsert` s (a device's ``app_version`` update; a live event moving to its next
        ``starts_at`` once its broadcast is over) do not count towards ``n``; their ts are in
        order too.

        Successive calls continue the same stream (sessions and random sequence resume: a session
        in progress at the end of one call finishes early in the next), so use consecutive,
        non-overlapping windows. Validation happens here; the mutations are generated lazily.

        Raises:
            ValueError: if ``n < 0``, or ``n > 0`` and ``end_ts <= start_ts``.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n and end_ts <= start_ts:
            raise ValueError(f"the window [{start_ts}, {end_ts}) is empty")
        self._activity_calls += 1
        return self._activity(n, start_ts, end_ts, f"act:{self._seed}:{self._activity_calls}.")

    def _activity(self, n: int, start_ts: int, end_ts: int, prefix: str) -> Iterator[Mutation]:
        rng = self._rng
        rand = rng.random
        bits = rng.getrandbits
        span = end_ts - start_ts
        heavy_share = self.config.heavy_share
        pool, heavy_pools = self._pool, self._heavy_pools
        new_session = self._new_session
        normal_profiles = self._normal_profiles
        heavy_accounts = self._heavy_profiles
        n_heavy = len(heavy_accounts)
        recent: list[EdgeUpsert | None] = [None] * (1 << DUPLICATE_WINDOW_BITS)
        recent_mask = len(recent) - 1
        late_from = 1.0 - LATE_SHARE  # r in [late_from, 1): a late event
        update_below = DUPLICATE_SHARE + DEVICE_UPDATE_SHARE  # r in [DUPLICATE_SHARE, this)
        next_roll = self._next_live_roll()
        for i in range(n):
            ts = start_ts + i * span // n
            if ts >= next_roll:
                yield from self._roll_live_events(ts, f"{prefix}r{i}.")
                next_roll = self._next_live_roll()
            r = rand()
            if r < DUPLICATE_SHARE:
                old = recent[bits(DUPLICATE_WINDOW_BITS)]
                if old is not None:
                    yield old
                    continue
            if heavy_share and (normal_profiles is None or rand() < heavy_share):
                # The account is drawn per event (not per session) so that every heavy account
                # gets the same share whatever the lengths of its profiles' sessions.
                a = int(rand() * n_heavy)
                account_pool = heavy_pools[a]
                slot = bits(HEAVY_POOL_BITS)
                steps = account_pool[slot]
                if not steps:
                    profiles = heavy_accounts[a]
                    steps = account_pool[slot] = new_session(
                        profiles[int(rand() * len(profiles))], ts
                    )
            else:
                slot = bits(POOL_BITS)
                steps = pool[slot]
                if not steps:
                    assert normal_profiles is not None  # guaranteed by CompanyConfig
                    steps = pool[slot] = new_session(normal_profiles.draw(rand()), ts)
            src, etype, dst, props = steps.pop()
            if r >= late_from:
                ts = max(start_ts, ts - 1 - rng.randrange(LATE_MAX_US))
            m = EdgeUpsert(src, etype, dst, ts, f"{prefix}{i}", props)
            recent[i & recent_mask] = m
            yield m
            if r < update_below and r >= DUPLICATE_SHARE:
                yield self._device_update(ts, f"{prefix}u{i}")

    def _new_session(self, p: int, ts: int) -> list[_Step]:
        """The steps of a new session of profile ``p`` starting at ``ts``, last step first."""
        rand = self._rng.random
        if self._profile_kids[p]:
            return self._title_session(p, self._kids_titles)
        r = rand()
        if r < LIVE_SESSION_SHARE:
            steps = self._live_session(p, ts)
            if steps:
                return steps
        elif r < LIVE_SESSION_SHARE + SUPPORT_SESSION_SHARE and self._team_ids:
            team = self._team_ids[int(rand() * len(self._team_ids))]
            source = SUPPORT_SOURCES[int(rand() * len(SUPPORT_SOURCES))]
            return [(self._profile_ids[p], "supports", team, {"source": source})]
        elif (
            r < LIVE_SESSION_SHARE + SUPPORT_SESSION_SHARE + GAME_SESSION_SHARE
            and self._profile_gamer[p]
            and self._games is not None
        ):
            props: Props = {
                "minutes": 1 + int(rand() * MAX_GAME_MINUTES),
                "device": self._device_ids[self._pick_device(p)],
            }
            return [(self._profile_ids[p], "plays", self._games.draw(rand()), props)]
        return self._title_session(p, self._titles)

    def _pick_device(self, p: int) -> int:
        devices = self._profile_devices[p]
        if self._rng.random() < PRIMARY_DEVICE_SHARE:
            return devices[0]
        return devices[1 + int(self._rng.random() * (len(devices) - 1))]

    def _title_session(self, p: int, titles: _Alias[str]) -> list[_Step]:
        rng = self._rng
        rand, bits = rng.random, rng.getrandbits
        pid = self._profile_ids[p]
        steps: list[_Step] = []
        title: str | None = None
        if rand() < DIRECT_WATCH_SHARE:
            title = titles.draw(rand())
        else:
            for _ in range(1 + bits(BROWSE_BITS)):
                title = titles.draw(rand())
                props: Props = {
                    "row": BROWSE_ROWS[bits(ROW_BITS)],
                    "page": BROWSE_PAGES[bits(PAGE_BITS)],
                }
                steps.append((pid, "browsed", title, props))
            if rand() >= WATCH_AFTER_BROWSE_SHARE:
                steps.reverse()
                return steps
        assert title is not None
        d = self._pick_device(p)
        device = self._device_ids[d]
        r = rand()
        position = 0 if r < WATCH_FROM_START_SHARE else int(rand() * MAX_RESUME_POSITION_S)
        steps.append((pid, "started_watching", title, {"position_s": position, "device": device}))
        bitrate = DEVICE_TYPES[self._device_types[d]][3][bits(LADDER_BITS)]
        steps.append((pid, "streamed_from", device, {"title": title, "bitrate_kbps": bitrate}))
        steps.reverse()
        return steps

    def _live_session(self, p: int, ts: int) -> list[_Step]:
        """A live session at ``ts``: watch an event that is on, or browse one coming up; empty if
        no event is on or coming up."""
        rand = self._rng.random
        on: list[int] = []
        coming: list[int] = []
        for e, starts_at in enumerate(self._live_starts):
            if starts_at - LIVE_PRE_ROLL_US <= ts < starts_at + LIVE_DURATION_US:
                on.append(e)
            elif starts_at - LIVE_PROMO_US <= ts < starts_at:
                coming.append(e)
        pid = self._profile_ids[p]
        if not on:
            if not coming:
                return []
            e = coming[int(rand() * len(coming))]
            return [(pid, "browsed", self._live_ids[e], {"row": "coming_up", "page": "home"})]
        e = on[int(rand() * len(on))]
        live_id = self._live_ids[e]
        steps: list[_Step] = []
        if rand() < BROWSE_BEFORE_LIVE_SHARE:
            steps.append((pid, "browsed", live_id, {"row": "live_now", "page": "home"}))
        minutes = 1 + int(rand() * ((LIVE_DURATION_US + LIVE_PRE_ROLL_US) // MINUTE))
        device = self._device_ids[self._pick_device(p)]
        steps.append((pid, "watched_live", live_id, {"device": device, "minutes": minutes}))
        teams = self._live_teams[e]
        if teams and rand() < SUPPORT_AFTER_LIVE_SHARE:
            team = teams[int(rand() * len(teams))]
            steps.append((pid, "supports", team, {"source": "live_event"}))
        steps.reverse()
        return steps

    def _next_live_roll(self) -> int:
        """The ts at which the earliest broadcast ends (a live event must move on then)."""
        if not self._live_starts:
            return NEVER
        return min(self._live_starts) + LIVE_DURATION_US

    def _roll_live_events(self, ts: int, prefix: str) -> Iterator[NodeUpsert]:
        """Move every live event whose broadcast ended by ``ts`` to its next ``starts_at``."""
        for e, starts_at in enumerate(self._live_starts):
            ended = starts_at + LIVE_DURATION_US
            if ts >= ended:
                starts_at += ((ts - ended) // LIVE_PERIOD_US + 1) * LIVE_PERIOD_US
                self._live_starts[e] = starts_at
                yield NodeUpsert(self._live_ids[e], ts, f"{prefix}{e}", {"starts_at": starts_at})

    def _device_update(self, ts: int, idempotency_id: str) -> NodeUpsert:
        """A random device updates its app to the newest build."""
        self._app_build += 1
        device = self._device_ids[int(self._rng.random() * len(self._device_ids))]
        version = f"{APP_MAJOR}.{APP_LATEST_MINOR}.{self._app_build}"
        return NodeUpsert(device, ts, idempotency_id, {"app_version": version})
