"""Prompt generators for the traffic simulator: topic × task × phrasing lists, no model needed.

Every generator is a pure function of a :class:`random.Random`, so a seeded persona always writes the same
prompts. The lists are deliberately broad and the wording varied (openers, politeness, typos, lengths), because
a monitor that only has to tell a fixed template from a fixed template learns nothing. Pools that attackers (and
the templated benign apps) draw their *templates* from are split by :func:`split_pool` into a training half and
a held-out half, so that held-out traffic uses templates a detector has never seen.

Example:
    >>> import random
    >>> rng = random.Random(0)
    >>> len(casual_prompt(rng)) > 10
    True
    >>> split_pool(["a", "b", "c", "d"], "train"), split_pool(["a", "b", "c", "d"], "heldout")
    (['a', 'c'], ['b', 'd'])
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from antidistill.errors import InputError

T = TypeVar("T")

SPLITS = ("train", "heldout")


def check_split(split: str) -> str:
    """``split`` if it is ``train`` or ``heldout``; else a ``ValueError`` naming the field."""
    if split not in SPLITS:
        raise InputError(f"split must be 'train' or 'heldout', got {split!r}")
    return split


def split_pool(pool: Sequence[T], split: str) -> list[T]:
    """The half of ``pool`` a split may use: even positions for ``train``, odd ones for ``heldout``."""
    check_split(split)
    return list(pool[0::2] if split == "train" else pool[1::2])


# ---- topics ---------------------------------------------------------------------------------------------------
TOPICS: dict[str, tuple[str, ...]] = {
    "science": (
        "photosynthesis",
        "black holes",
        "plate tectonics",
        "the immune system",
        "quantum entanglement",
        "CRISPR gene editing",
        "ocean acidification",
        "the water cycle",
        "dark matter",
        "mitochondria",
        "the greenhouse effect",
        "vaccines",
        "antibiotic resistance",
        "volcanoes",
        "superconductors",
    ),
    "history": (
        "the fall of the Roman Empire",
        "the printing press",
        "the French Revolution",
        "the Silk Road",
        "the industrial revolution",
        "the Cold War",
        "the Meiji Restoration",
        "the Ottoman Empire",
        "the Apollo program",
        "the Hanseatic League",
        "the Byzantine Empire",
    ),
    "programming": (
        "recursion",
        "hash tables",
        "garbage collection",
        "async/await",
        "database indexes",
        "REST APIs",
        "unit testing",
        "Git rebasing",
        "Docker containers",
        "memory leaks",
        "regular expressions",
        "dependency injection",
        "race conditions",
        "big-O notation",
    ),
    "math": (
        "prime numbers",
        "derivatives",
        "Bayes' theorem",
        "matrix multiplication",
        "the Pythagorean theorem",
        "standard deviation",
        "logarithms",
        "complex numbers",
        "eigenvalues",
        "combinatorics",
        "modular arithmetic",
        "integration by parts",
        "linear regression",
    ),
    "health": (
        "intermittent fasting",
        "sleep hygiene",
        "stretching before running",
        "vitamin D",
        "managing stress",
        "lower back pain",
        "hydration",
        "strength training for beginners",
        "seasonal allergies",
        "posture at a desk",
    ),
    "finance": (
        "compound interest",
        "index funds",
        "inflation",
        "a Roth IRA",
        "budgeting apps",
        "credit scores",
        "mortgage refinancing",
        "emergency funds",
        "stock options",
        "bond yields",
    ),
    "cooking": (
        "sourdough bread",
        "risotto",
        "a vegetarian lasagna",
        "fermenting kimchi",
        "pan-seared salmon",
        "meal prep for a week",
        "making pasta from scratch",
        "a gluten-free cake",
        "ramen broth",
        "cast iron care",
    ),
    "travel": (
        "a week in Japan",
        "backpacking in Portugal",
        "a road trip through Utah",
        "visiting Iceland in winter",
        "Lisbon on a budget",
        "a weekend in Vienna",
        "hiking in Patagonia",
        "the Amalfi coast",
    ),
    "law": (
        "tenant rights",
        "GDPR",
        "copyright fair use",
        "non-compete clauses",
        "small claims court",
        "software licences",
        "employment contracts",
        "trademarks",
    ),
    "business": (
        "a go-to-market strategy",
        "OKRs",
        "customer churn",
        "pricing a SaaS product",
        "writing a business plan",
        "remote team management",
        "supply chain risk",
        "unit economics",
    ),
    "literature": (
        "Moby-Dick",
        "magical realism",
        "the unreliable narrator",
        "Shakespeare's sonnets",
        "Jane Austen's irony",
        "haiku",
        "the hero's journey",
        "stream of consciousness",
    ),
    "philosophy": (
        "the trolley problem",
        "free will",
        "utilitarianism",
        "Stoicism",
        "the ship of Theseus",
        "existentialism",
        "Kant's categorical imperative",
        "the problem of induction",
    ),
}
ALL_TOPICS: tuple[str, ...] = tuple(t for ts in TOPICS.values() for t in ts)

LANGUAGES = ("Python", "JavaScript", "TypeScript", "Go", "Rust", "Java", "C++", "SQL", "Bash", "C#", "Kotlin")

_CASUAL_OPENERS = (
    "",
    "",
    "",
    "hey, ",
    "Hi! ",
    "quick question: ",
    "Can you help me? ",
    "ok so ",
    "I was wondering, ",
    "Hello. ",
    "hmm, ",
    "Please ",
    "So my friend asked me and I didn't know: ",
)
_CASUAL_TASKS = (
    "what is {t}?",
    "explain {t} like I'm five",
    "can you explain {t} in simple terms",
    "give me a short summary of {t}",
    "why does {t} matter?",
    "what are common misconceptions about {t}",
    "how would you explain {t} to a teenager",
    "tell me something interesting about {t}",
    "what's the difference between {t} and {u}?",
    "write a short poem about {t}",
    "I'm reading about {t} and I'm confused. what's the main idea",
    "pros and cons of {t}?",
    "recommend some books about {t}",
    "is it true that {t} is overrated?",
    "help me understand {t}",
    "write a tweet about {t}",
    "make a quiz with 3 questions about {t}",
    "what should a beginner know about {t}",
    "give me a fun fact about {t}",
    "how do I get started with {t}",
)
_CASUAL_PERSONAL = (
    "write a birthday message for my sister who loves {t}",
    "draft an email to my landlord about a broken heater",
    "help me plan a dinner party for 6 people",
    "what should I name my new cat? she is grey and very loud",
    "can you fix the grammar in this: 'me and him goes to the store yesterday and buyed apples'",
    "I have an interview tomorrow for a marketing job, what questions should I prepare for",
    "suggest a 20 minute workout I can do at home without equipment",
    "rewrite this to sound more polite: 'send me the report now'",
    "give me 5 ideas for a weekend with kids",
    "how do I tell my boss I need a day off",
    "translate 'where is the train station' into Spanish and German",
    "what's a good gift for someone who likes {t}",
    "summarise the plot of a movie about {t} that you'd make up",
)
_FOLLOWUPS = (
    "thanks! can you make it shorter?",
    "can you give an example?",
    "hmm, I don't get the second part",
    "ok and what about {u}?",
    "make it more formal please",
    "can you expand on that?",
    "why?",
    "great, now in bullet points",
    "is that really true?",
    "thanks",
    "and for a beginner?",
    "could you translate that into French?",
    "what would be a counterargument?",
)
_SUFFIXES = (
    "",
    "",
    "",
    "",
    " thanks",
    " please",
    "!",
    "?",
    " :)",
    " (keep it short)",
    " in 3 sentences",
    " with examples",
    " I need this for school",
)


def _typos(rng: random.Random, text: str, rate: float) -> str:
    """Swap adjacent letters at ``rate`` per word: people type fast."""
    if rate <= 0:
        return text
    words = text.split(" ")
    for i, w in enumerate(words):
        if len(w) > 3 and rng.random() < rate:
            j = rng.randrange(len(w) - 1)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def casual_prompt(rng: random.Random, topics: Sequence[str] = ALL_TOPICS, typo_rate: float = 0.03) -> str:
    """A casual chat user's first message: a question, a favour, a small writing job."""
    t, u = rng.choice(topics), rng.choice(ALL_TOPICS)
    pool = _CASUAL_PERSONAL if rng.random() < 0.3 else _CASUAL_TASKS
    body = rng.choice(pool).format(t=t, u=u)
    text = rng.choice(_CASUAL_OPENERS) + body + rng.choice(_SUFFIXES)
    if rng.random() < 0.4:
        text = text.lower()
    return _typos(rng, text, typo_rate)


def followup_prompt(rng: random.Random) -> str:
    """A follow-up turn in a chat."""
    return rng.choice(_FOLLOWUPS).format(u=rng.choice(ALL_TOPICS))


# ---- code ----------------------------------------------------------------------------------------------------
_CODE_TASKS = (
    "Write a {lang} function that {what}.",
    "How do I {what} in {lang}?",
    "Why does this {lang} code fail?\n\n{snippet}",
    "Refactor this {lang} code to be more readable:\n\n{snippet}",
    "Add type hints and a docstring:\n\n{snippet}",
    "Write unit tests for this function:\n\n{snippet}",
    "Explain what this code does:\n\n{snippet}",
    "Convert this to {lang2}:\n\n{snippet}",
    "Is there a bug here? {snippet}",
    "What's the idiomatic way to {what} in {lang}?",
    "Optimise this, it is too slow on large inputs:\n\n{snippet}",
    "I get `{error}` when I run this:\n{snippet}\nwhat am I doing wrong",
)
_CODE_WHATS = (
    "reverses a linked list",
    "parses a CSV file and sums a column",
    "debounces a function call",
    "reads a JSON config with defaults",
    "retries an HTTP request with exponential backoff",
    "finds duplicate files by hash",
    "validates an email address",
    "merges two sorted arrays",
    "computes a moving average",
    "flattens a nested dictionary",
    "paginates a SQL query",
    "serialises a dataclass to JSON",
    "implements an LRU cache",
    "streams a large file line by line",
    "runs tasks concurrently with a limit",
    "converts timestamps between time zones",
)
_ERRORS = (
    "TypeError: 'NoneType' object is not subscriptable",
    "IndexError: list index out of range",
    "undefined is not a function",
    "segmentation fault (core dumped)",
    "KeyError: 'id'",
    "borrowed value does not live long enough",
    "NullPointerException",
    "deadlock detected",
    "ModuleNotFoundError: No module named 'requests'",
    "SyntaxError: unexpected EOF while parsing",
)
_IDENTS = ("items", "data", "users", "rows", "result", "cache", "values", "queue", "nodes", "records", "buf")


def code_snippet(rng: random.Random) -> str:
    """A small, plausible (often buggy) code snippet."""
    a, b = rng.sample(_IDENTS, 2)
    n = rng.randint(2, 50)
    shapes = (
        f"def process({a}):\n    {b} = []\n    for i in range(len({a}) + 1):\n        {b}.append({a}[i] * {n})\n"
        f"    return {b}",
        f"function load{a.title()}({b}) {{\n  return fetch('/api/{a}?limit={n}')\n    .then(r => r.json())\n"
        f"    .then(j => j.{b}.map(x => x.id));\n}}",
        f"SELECT {a}.id, COUNT(*) FROM {a} JOIN {b} ON {b}.{a}_id = {a}.id\nWHERE {a}.created_at > NOW() - "
        f"INTERVAL '{n} days'\nGROUP BY {a}.id;",
        f"func sum{a.title()}({b} []int) int {{\n    total := 0\n    for i := 0; i <= len({b}); i++ {{\n"
        f"        total += {b}[i]\n    }}\n    return total\n}}",
        f"class {a.title()}Cache:\n    def __init__(self):\n        self.{b} = {{}}\n    def get(self, k):\n"
        f"        return self.{b}[k]\n    def put(self, k, v):\n        if len(self.{b}) > {n}:\n"
        f"            self.{b}.clear()\n        self.{b}[k] = v",
        f"for f in $(ls *.log); do\n  grep -c ERROR $f > {a}_$f.txt\ndone",
    )
    return rng.choice(shapes)


def code_prompt(rng: random.Random, languages: Sequence[str] = LANGUAGES) -> str:
    """A coding question as developers type it into an assistant."""
    lang, lang2 = rng.sample(list(languages) if len(languages) > 1 else list(LANGUAGES), 2)
    return rng.choice(_CODE_TASKS).format(
        lang=lang, lang2=lang2, what=rng.choice(_CODE_WHATS), snippet=code_snippet(rng), error=rng.choice(_ERRORS)
    )


CODING_SYSTEM_PROMPTS = (
    "You are DevPilot, an AI pair programmer inside the user's editor. Answer with concise explanations and "
    "complete, runnable code. Prefer the language of the open file. Never invent APIs.",
    "You are a senior software engineer helping a colleague. Be precise, show code in fenced blocks, and point "
    "out security issues when you see them.",
    "You are CodeBuddy. The user is working in a repository; the current file and selection are provided. "
    "Answer briefly; when you change code, show only the changed function.",
)


# ---- RAG -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Document:
    """A document of a RAG app's fixed corpus, already cut into chunks."""

    title: str
    chunks: tuple[str, ...]


RAG_CORPORA: dict[str, tuple[Document, ...]] = {
    "hr-handbook": (
        Document(
            "Leave policy",
            (
                "Employees accrue 2.08 days of paid leave per month of service, up to 25 days per calendar year. "
                "Unused leave of up to 5 days carries over to the next year and expires on 31 March.",
                "Sick leave does not count against paid leave. From the fourth consecutive day of sickness a "
                "medical certificate must be sent to HR within two working days.",
                "Parental leave is 16 weeks at full pay for the primary caregiver and 6 weeks for the secondary "
                "caregiver, to be taken within the first year after birth or adoption.",
            ),
        ),
        Document(
            "Expenses",
            (
                "Travel must be booked through the travel portal. Economy class is the default for flights under "
                "six hours; premium economy may be approved by a director for longer flights.",
                "Meals while travelling are reimbursed up to 60 EUR per day with receipts. Alcohol is not "
                "reimbursed except at client dinners approved in advance.",
                "Expense reports are due within 30 days of the expense; late reports need a manager's approval.",
            ),
        ),
        Document(
            "Remote work",
            (
                "Employees may work remotely up to three days a week after their probation period. Fully remote "
                "arrangements require a written agreement with HR.",
                "A one-off home office allowance of 500 EUR is available; receipts must be submitted within 90 days.",
                "Working from another country for more than 20 days a year needs approval from legal and payroll.",
            ),
        ),
    ),
    "product-docs": (
        Document(
            "Getting started",
            (
                "Install the CLI with `pip install acmectl` and run `acmectl login` to authenticate with your "
                "workspace. Tokens are stored in the system keychain.",
                "A project is created with `acmectl init`; it writes acme.toml, which holds the region, the runtime "
                "and the environment variables of the project.",
                "Deploy with `acmectl deploy`. The first deploy provisions a database and prints the public URL.",
            ),
        ),
        Document(
            "Billing",
            (
                "The Starter plan includes 100,000 requests a month; beyond that, requests cost 0.40 USD per 1,000. "
                "The Team plan includes 2 million requests and SSO.",
                "Invoices are issued on the first day of each month. A failed payment is retried three times over "
                "seven days before the workspace is suspended.",
                "Refunds are available within 14 days of an annual upgrade; monthly plans are not refunded.",
            ),
        ),
        Document(
            "Limits and quotas",
            (
                "Each project may run up to 10 concurrent deployments. Build minutes are capped at 600 per month on "
                "the Starter plan.",
                "Request bodies are limited to 6 MB and responses to 20 MB. Functions time out after 30 seconds "
                "unless a longer timeout is configured (maximum 900 seconds).",
                "Rate limits are 100 requests per second per project; exceeding them returns HTTP 429.",
            ),
        ),
    ),
    "clinic-faq": (
        Document(
            "Appointments",
            (
                "Appointments can be booked online up to 8 weeks ahead. Cancellations less than 24 hours before "
                "the appointment are charged 30 EUR.",
                "Same-day appointments are reserved for urgent cases and can be requested by phone from 8:00.",
                "Video consultations are available for follow-ups and prescription renewals.",
            ),
        ),
        Document(
            "Vaccinations",
            (
                "The clinic offers influenza vaccination from October to December without an appointment on "
                "Tuesday and Thursday mornings.",
                "Travel vaccinations need a consultation at least six weeks before departure.",
                "Children's vaccinations follow the national schedule; bring the vaccination booklet.",
            ),
        ),
    ),
}

RAG_SYSTEM_PROMPTS = (
    "You are a helpful assistant for {org}. Answer only from the provided context. If the answer is not in the "
    "context, say you don't know. Cite the document title in brackets.",
    "You answer employee and customer questions for {org} using the retrieved passages. Be brief and factual. "
    "Do not speculate beyond the passages.",
    "You are {org}'s support bot. Use the CONTEXT to answer the QUESTION. Reply in the language of the question.",
    "Answer the user's question about {org} strictly based on the sources below; quote the relevant sentence.",
)
RAG_TEMPLATES = (
    "Context:\n{context}\n\nQuestion: {question}\nAnswer:",
    "### Sources\n{context}\n\n### Question\n{question}",
    "Use the following passages to answer.\n---\n{context}\n---\nQ: {question}",
    "<context>\n{context}\n</context>\n<question>{question}</question>",
)
_RAG_QUESTIONS = (
    "how many {x} do I get?",
    "what is the rule for {x}?",
    "can I {y}?",
    "what happens if {y}?",
    "where do I find info about {x}",
    "is there a limit on {x}?",
    "who approves {x}?",
    "what's the deadline for {x}",
    "how does {x} work",
    "do I need {x} for this?",
)
_RAG_SUBJECTS = {
    "hr-handbook": (
        ("paid leave", "carry over unused leave"),
        ("sick leave", "I'm sick for five days"),
        ("parental leave", "take parental leave after adoption"),
        ("travel booking", "fly business class"),
        ("meal expenses", "expense a client dinner"),
        ("remote work", "work from Spain for a month"),
        ("home office allowance", "submit receipts late"),
    ),
    "product-docs": (
        ("requests on the Starter plan", "exceed the free requests"),
        ("refunds", "cancel my annual plan"),
        ("concurrent deployments", "run 20 deployments at once"),
        ("function timeouts", "a function runs longer than 30 seconds"),
        ("login tokens", "log in on a CI server"),
        ("failed payments", "my card is declined"),
    ),
    "clinic-faq": (
        ("cancellation fees", "cancel on the same day"),
        ("flu shots", "come without an appointment"),
        ("travel vaccinations", "travel to Kenya next month"),
        ("video consultations", "renew a prescription by video"),
    ),
}


def rag_question(rng: random.Random, corpus: str) -> str:
    """A user's question to a RAG app over ``corpus``."""
    x, y = rng.choice(_RAG_SUBJECTS[corpus])
    q = rng.choice(_RAG_QUESTIONS).format(x=x, y=y)
    return (q[0].upper() + q[1:]) if rng.random() < 0.6 else q


def rag_context(rng: random.Random, corpus: str, k: int) -> str:
    """``k`` retrieved chunks from the corpus, as the app pastes them into its template."""
    chunks = [(d.title, c) for d in RAG_CORPORA[corpus] for c in d.chunks]
    picked = rng.sample(chunks, min(k, len(chunks)))
    return "\n\n".join(f"[{title}] {text}" for title, text in picked)


# ---- enterprise batch jobs ---------------------------------------------------------------------------------------
BATCH_INSTRUCTIONS = (
    "Classify the following support ticket into exactly one of: billing, bug, feature_request, account, other. "
    "Reply with the label only.\n\nTicket:\n{record}",
    "Extract the product name, the problem and the customer's sentiment (positive/neutral/negative) from this "
    "review as JSON with keys product, problem, sentiment.\n\nReview: {record}",
    "Summarise this customer conversation in one sentence for the CRM.\n\n{record}",
    "Translate the following product description into German, keeping the formatting.\n\n{record}",
    "Does this message contain personal data (names, emails, phone numbers)? Answer yes or no.\n\n{record}",
    "Rewrite this internal note as a polite customer-facing update, under 60 words.\n\n{record}",
)
_PRODUCTS = (
    "the mobile app",
    "the desktop client",
    "invoice export",
    "the dashboard",
    "SSO login",
    "the API",
    "the printer driver",
    "the smart thermostat",
    "order tracking",
    "the subscription page",
)
_PROBLEMS = (
    "crashes on startup",
    "shows the wrong currency",
    "is very slow since the update",
    "logs me out",
    "charged me twice",
    "doesn't sync",
    "won't accept my card",
    "lost my settings",
    "is missing a dark mode",
    "sends duplicate emails",
)
_TONES = ("Hi, ", "Hello support, ", "", "URGENT: ", "Dear team, ", "hey - ")


def batch_record(rng: random.Random) -> str:
    """One record of an enterprise's own data (ticket, review, note) for a batch job."""
    p, q = rng.choice(_PRODUCTS), rng.choice(_PROBLEMS)
    n = rng.randint(1000, 99999)
    forms = (
        f"{rng.choice(_TONES)}{p} {q}. Order #{n}. Please fix this asap.",
        f"{rng.choice(_TONES)}I've been a customer for {rng.randint(1, 9)} years and {p} {q}. "
        f"I tried reinstalling. Ticket ref {n}.",
        f"Review ({rng.randint(1, 5)}/5): {p.capitalize()} {q}, otherwise fine.",
        f"Agent: How can I help?\nCustomer: {p} {q}.\nAgent: Sorry about that, I've escalated case {n}.",
        f"Note: customer {n} reports that {p} {q}; engineering is investigating, ETA {rng.randint(1, 5)} days.",
    )
    return rng.choice(forms)


# ---- evaluation benchmarks ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchmarkItem:
    """One item of a benchmark as an evaluation harness sends it."""

    benchmark: str
    index: int
    prompt: str


EVAL_BENCHMARKS = ("math-word", "multiple-choice", "code-completion", "reading")
_NAMES = ("Ava", "Liam", "Noah", "Mia", "Sofia", "Lucas", "Emma", "Omar", "Yuki", "Priya", "Jonas", "Chen")
_THINGS = ("apples", "marbles", "books", "stickers", "cupcakes", "tickets", "pencils", "shells", "coins")


def _math_word(rng: random.Random) -> str:
    a, b = rng.sample(_NAMES, 2)
    thing = rng.choice(_THINGS)
    x, y, z = rng.randint(3, 90), rng.randint(2, 12), rng.randint(2, 9)
    forms = (
        f"{a} has {x} {thing}. {b} gives {a} {y} times as many {thing} as {a} had, then {a} gives away {z}. "
        f"How many {thing} does {a} have now?",
        f"A shop sells {thing} at ${y} each. {a} buys {x} and pays with a ${(x * y // 50 + 1) * 50} bill. "
        f"How much change does {a} get?",
        f"{a} reads {y} pages a day for {z} days, then {x} pages on the last day. How many pages in total?",
        f"A train travels {x * 10} km in {z} hours. At the same speed, how far does it travel in {y} hours?",
    )
    return rng.choice(forms)


def _multiple_choice(rng: random.Random) -> str:
    domain = rng.choice(sorted(TOPICS))
    topics = rng.sample(TOPICS[domain], 4)
    q = rng.choice(
        (
            "Which of the following is most closely associated with {d}?",
            "Which term from {d} does this describe: a concept central to the field?",
            "In {d}, which of these would an expert discuss first?",
        )
    )
    opts = "\n".join(f"{letter}. {t}" for letter, t in zip("ABCD", topics, strict=True))
    return f"The following is a multiple choice question about {domain}.\n\n{q.format(d=domain)}\n{opts}\nAnswer:"


def _code_completion(rng: random.Random) -> str:
    what = rng.choice(_CODE_WHATS)
    name = "_".join(what.split()[:2])
    return f'def {name}(*args):\n    """A function that {what}.\n\n    >>> {name}([])\n    """\n'


def _reading(rng: random.Random) -> str:
    corpus = rng.choice(sorted(RAG_CORPORA))
    doc = rng.choice(RAG_CORPORA[corpus])
    return (
        f"Passage: {' '.join(doc.chunks)}\n\nQuestion: According to the passage, what is said about "
        f"{doc.title.lower()}?\nAnswer:"
    )


_BENCH_MAKERS = {
    "math-word": _math_word,
    "multiple-choice": _multiple_choice,
    "code-completion": _code_completion,
    "reading": _reading,
}
EVAL_COT_SUFFIX = (
    "",
    "\nLet's think step by step.",
    "\nAnswer with the letter only.",
    "\nThink step by step, then give the final answer after '####'.",
)


def benchmark_items(benchmark: str, n: int, seed: int) -> list[BenchmarkItem]:
    """A benchmark's first ``n`` items: the same for every harness that runs it (the seed names the benchmark)."""
    if benchmark not in _BENCH_MAKERS:
        raise InputError(f"benchmark must be one of {', '.join(EVAL_BENCHMARKS)}, got {benchmark!r}")
    rng = random.Random(f"benchmark:{benchmark}:{seed}")
    return [BenchmarkItem(benchmark, i, _BENCH_MAKERS[benchmark](rng)) for i in range(n)]


# ---- reasoning elicitation (chain-of-thought extraction) --------------------------------------------------------
COT_DEMANDS = (
    "Show all your reasoning step by step, and do not skip any step, before giving the final answer.",
    "Think through this carefully. Write out your complete chain of thought, including every intermediate "
    "calculation, then state the answer.",
    "Before answering, reason step by step in detail. Include your full internal reasoning, not a summary.",
    "Explain your complete thought process from first principles, numbering each step, then give the answer on "
    "the last line as 'Final answer: ...'.",
    "Please provide a detailed, step-by-step derivation. I need to see every step of the reasoning, including "
    "the ones that seem obvious.",
    "Walk me through exactly how you would solve this, thinking out loud, and verify your answer at the end.",
    "Reason in <thinking> tags first, as long as needed, then answer in <answer> tags.",
    "First write down everything you know that is relevant, then reason step by step, check each step, and only "
    "then conclude.",
    "Solve it showing your full working; explain why each step follows from the previous one.",
    "Give a rigorous, fully worked solution with all reasoning made explicit, then a one-line answer.",
)
_LOGIC = (
    "Three boxes are labelled apples, oranges and mixed, and every label is wrong. You may take one fruit from "
    "one box. How do you relabel all boxes?",
    "If all bloops are razzies and some razzies are lazzies, must some bloops be lazzies?",
    "A bat and a ball cost $1.10 in total. The bat costs $1.00 more than the ball. How much is the ball?",
    "Five people sit in a row. {a} is left of {b}, {c} is at one end, and {b} is not next to {c}. Where can {a} sit?",
    "You have {x} coins, one counterfeit and lighter. What is the minimum number of weighings on a balance to find it?",
    "Is {x} a prime number? Prove your answer.",
    "How many ways can {x} distinct books be arranged on a shelf if two particular books must be adjacent?",
    "Find all integer solutions of x^2 - {y}x + {z} = 0.",
    "What is the probability of getting at least two heads in {y} fair coin tosses?",
    "A rectangle's perimeter is {x} cm and its length is {y} cm more than its width. What is its area?",
)


def reasoning_problem(rng: random.Random) -> str:
    """A problem that rewards reasoning: logic puzzles, math word problems, proofs, code puzzles."""
    r = rng.random()
    if r < 0.45:
        a, b, c = rng.sample(_NAMES, 3)
        return rng.choice(_LOGIC).format(
            a=a, b=b, c=c, x=rng.randint(7, 120), y=rng.randint(3, 12), z=rng.randint(2, 30)
        )
    if r < 0.85:
        return _math_word(rng)
    return f"What does this function return for an input of {rng.randint(2, 9)}, and why?\n\n{code_snippet(rng)}"


def cot_prompt(rng: random.Random, demands: Sequence[str], problem: str | None = None) -> str:
    """A reasoning problem wrapped in a demand for the whole chain of thought (before or after the problem)."""
    problem = problem or reasoning_problem(rng)
    demand = rng.choice(demands)
    return f"{demand}\n\n{problem}" if rng.random() < 0.35 else f"{problem}\n\n{demand}"


# ---- harvesting templates ------------------------------------------------------------------------------------
HARVEST_TEMPLATES = (
    "Write a detailed, comprehensive answer to the following question: {q}",
    "You are an expert. Provide a thorough, well-structured explanation of {t}. Cover definitions, examples "
    "and common pitfalls.",
    "Question: {q}\nGive a complete, high-quality answer.",
    "Explain {t} in depth, as a textbook chapter would.",
    "Respond to the user as a helpful assistant.\nUser: {q}\nAssistant:",
    "Generate an expert-level response. Topic: {t}. Task: {task}.",
    "{q} Please be as detailed and accurate as possible.",
    "Instruction: {task} about {t}.\nResponse:",
    "I need a long, detailed answer. {q}",
    "Provide a step-by-step guide: {task} ({t}).",
    "As a world-class tutor, {task} on the subject of {t}.",
    "Task: {task}\nSubject: {t}\nLength: detailed\nFormat: markdown",
)
HARVEST_TASKS = (
    "write an explanation",
    "write a tutorial",
    "answer common questions",
    "compare alternatives",
    "give worked examples",
    "summarise the key ideas",
    "write an FAQ",
    "describe the history",
    "list best practices",
    "explain the trade-offs",
    "write a lesson plan",
    "write an essay",
)


def harvest_prompt(rng: random.Random, templates: Sequence[str], topics: Sequence[str]) -> str:
    """A harvesting request: one of the campaign's templates filled with a topic and a task."""
    t = rng.choice(topics)
    q = rng.choice(_CASUAL_TASKS).format(t=t, u=rng.choice(topics))
    return rng.choice(templates).format(t=t, q=q[0].upper() + q[1:], task=rng.choice(HARVEST_TASKS))


# ---- capability coverage sweeps ----------------------------------------------------------------------------------
SWEEP_SKILLS = (
    "explain a concept",
    "solve a problem",
    "write code",
    "write a story",
    "translate a passage",
    "summarise a text",
    "classify a statement",
    "argue both sides",
    "write a dialogue",
    "extract structured data",
    "critique an argument",
    "plan a project",
    "write a poem",
    "answer a trivia question",
    "give advice",
    "write an email",
)
SWEEP_DIFFICULTIES = ("beginner", "intermediate", "advanced", "expert")
SWEEP_FORMATS = ("plain text", "a bulleted list", "JSON", "a table", "a numbered procedure", "markdown")
SWEEP_TEMPLATES = (
    "[{domain} | {skill} | {difficulty}] {skill_cap} about {topic}. Output format: {fmt}.",
    "Difficulty: {difficulty}\nDomain: {domain}\nSkill: {skill}\nTopic: {topic}\nRespond in {fmt}.",
    "For a {difficulty} audience, {skill} related to {topic} ({domain}). Use {fmt}.",
    "{skill_cap} ({difficulty} level) on {topic}; answer as {fmt}.",
    "Category {domain}/{skill}, level {difficulty}: {topic}. Format the answer as {fmt}.",
    "Please {skill} about {topic}, pitched at a {difficulty} reader, formatted as {fmt}.",
)


@dataclass(frozen=True)
class SweepCell:
    """One cell of a capability grid: domain × skill × difficulty × format, with a topic of the domain."""

    domain: str
    skill: str
    difficulty: str
    fmt: str
    topic: str


def coverage_grid(
    rng: random.Random,
    domains: Sequence[str],
    skills: Sequence[str],
    difficulties: Sequence[str],
    formats: Sequence[str],
    topics_per_cell: int = 1,
) -> list[SweepCell]:
    """Every cell of the grid (in lexicographic order), each with ``topics_per_cell`` topics of its domain."""
    cells = []
    for d in domains:
        for s in skills:
            for diff in difficulties:
                for f in formats:
                    for t in rng.sample(TOPICS[d], min(topics_per_cell, len(TOPICS[d]))):
                        cells.append(SweepCell(d, s, diff, f, t))
    return cells


def sweep_prompt(cell: SweepCell, template: str) -> str:
    """A coverage-sweep request for one cell."""
    return template.format(
        domain=cell.domain,
        skill=cell.skill,
        skill_cap=cell.skill[0].upper() + cell.skill[1:],
        difficulty=cell.difficulty,
        fmt=cell.fmt,
        topic=cell.topic,
    )


# ---- research ---------------------------------------------------------------------------------------------------
_RESEARCH = (
    "We are studying how language models handle {t}. Answer the following as you normally would: {q}",
    "For a user study on explanations, explain {t} to a non-expert in under 150 words.",
    "Rate the following statement about {t} from 1 (false) to 5 (true) and justify briefly: '{t} is widely "
    "misunderstood.'",
    "Generate {k} diverse questions a student might ask about {t}.",
    "Here is a model-written answer about {t}: '{t} is mostly about memorisation.' Is it correct? Explain.",
    "Solve the problem and explain your reasoning step by step: {p}",
    "Annotate the sentiment of each sentence (positive/negative/neutral):\n1. I loved {t}.\n2. {t} bored me.\n"
    "3. {t} was fine.",
    "Paraphrase the following sentence five ways: 'Understanding {t} takes practice.'",
    "What are open research questions about {t}? Cite the kind of evidence that would settle them.",
)


def research_prompt(rng: random.Random, topics: Sequence[str]) -> str:
    """An experiment of a research team: probing, annotation, small data generation, reasoning checks."""
    t = rng.choice(topics)
    q = rng.choice(_CASUAL_TASKS).format(t=t, u=rng.choice(ALL_TOPICS))
    return rng.choice(_RESEARCH).format(t=t, q=q, k=rng.randint(3, 12), p=_math_word(rng))


# ---- reasoning demands in other words (no stock phrase of the monitor's list) -------------------------------------
#: demands for the whole reasoning, worded so that none holds a phrase of
#: :data:`antidistill.monitor.features.COT_PHRASES` (a test checks it): what a harvester writes once it knows the
#: list, and what a perturbed scenario puts in place of :data:`COT_DEMANDS`
PARAPHRASED_DEMANDS = (
    "Before the answer, lay out how you get there, one move at a time, leaving nothing implicit.",
    "I want the whole path from the question to the result written down, not just the result.",
    "Narrate what goes through your head while you work on this, then conclude.",
    "Write down each deduction you make, in order, and number them; the answer comes last.",
    "Don't jump to the conclusion: spell out the argument that leads to it, piece by piece.",
    "Give me the derivation in full, the way a grader would want to see it, then the result.",
    "Lay bare the logic behind your answer, including the parts that feel trivial.",
    "Please expose your working process in detail; a bare answer is useless to me.",
    "Talk through the problem at length first, checking yourself along the way, then answer.",
    "Produce the longest, most explicit justification you can, and only then the answer.",
)
#: a reasoning harvester's system prompts (asking for explicit reasoning without a stock phrase)
REASONING_SYSTEM_PROMPTS = (
    "You are a meticulous tutor. You never give an answer without the argument that leads to it.",
    "You are a careful problem solver who writes out every deduction before concluding.",
    "You are an expert grader's model solution writer: solutions are explicit and complete.",
    "You are a patient teacher who narrates the path to each result in full.",
)
#: what an agent loop asks of the model after its first answer (self-critique and revision)
REFINE_TURNS = (
    "Critique your previous answer: list every weakness, gap or error you can find.",
    "Now rewrite the answer, fixing each weakness you listed.",
    "Check the revised answer once more against the original task and point out anything still missing.",
    "Produce an improved final version that addresses those points.",
    "Compare the last two versions and explain which is better and why.",
    "Make the answer more complete: add the cases and examples it still lacks.",
    "Verify the result independently and correct it if needed.",
    "Condense everything above into one polished, self-contained answer.",
)
#: follow-ups a conversation farm sends to make a single answer into a long, rich dialogue
FARM_FOLLOWUPS = (
    "interesting, can you go deeper on that?",
    "give me two more examples",
    "what would an expert add here?",
    "and what are the edge cases?",
    "can you explain the last part differently?",
    "ok, now compare it with {u}",
    "what's a common mistake people make with this?",
    "summarise what we discussed so far",
)
#: what a nightly summariser asks for each document
SUMMARY_INSTRUCTIONS = (
    "Summarise the following document in three bullet points for the morning digest.\n\n{doc}",
    "Write a 60-word summary of this text for an internal newsletter.\n\n{doc}",
    "TL;DR of the following, one paragraph:\n\n{doc}",
    "Produce a short headline and a two-sentence summary of this article.\n\n{doc}",
)


def paraphrase_demands(text: str, rng: random.Random, split: str | None = None) -> str:
    """``text`` with every stock demand of :data:`COT_DEMANDS` (and the evaluation suffixes that demand
    reasoning) replaced by one of :data:`PARAPHRASED_DEMANDS` (the ``split``'s half of them where one is named,
    so a monitor trained on perturbed traffic never meets the held-out wordings); other text is left alone."""
    pool = PARAPHRASED_DEMANDS if split is None else split_pool(PARAPHRASED_DEMANDS, split)
    for stock in (*COT_DEMANDS, EVAL_COT_SUFFIX[1].strip(), EVAL_COT_SUFFIX[3].strip()):
        if stock in text:
            text = text.replace(stock, rng.choice(pool))
    for stock, other in _REWORDS.items():
        text = text.replace(stock, other)
    return text


# stock wordings of the harvesting templates that happen to hold a phrase of the monitor's list
_REWORDS = {"step-by-step guide": "guide that goes stage by stage"}


def document(rng: random.Random) -> str:
    """A document for a summariser: a few paragraphs of a corpus or records glued together."""
    corpus = rng.choice(sorted(RAG_CORPORA))
    parts = [rag_context(rng, corpus, rng.randint(2, 4))]
    parts += [batch_record(rng) for _ in range(rng.randint(0, 3))]
    return "\n\n".join(parts)
