"""OpenAI-style cursor pages (`after`, `before`, `limit`, `order`) over rows keyed by (created_at, id)."""
from __future__ import annotations

from livecast.services.errors import APIError

MAX_PAGE = 100


def check_page_args(limit: int, order: str, max_limit: int = MAX_PAGE) -> None:
    if not 1 <= limit <= max_limit:
        raise APIError(400, f"limit must be between 1 and {max_limit}, not {limit}", param="limit")
    if order not in ("asc", "desc"):
        raise APIError(400, f"order must be 'asc' or 'desc', not {order!r}", param="order")


def page(db, table: str, id_col: str, where: str, params: list, *, after: str | None, before: str | None,
         limit: int, order: str, max_limit: int = MAX_PAGE) -> tuple[list[dict], bool]:
    """Rows of `table` matching `where` after/before the cursor row, and whether more follow."""
    check_page_args(limit, order, max_limit)
    after, before = after or None, before or None  # "": the first_id/last_id of an empty page
    base = list(params)
    sql, params = f"SELECT * FROM {table} WHERE {where}", list(params)
    for cursor_id, forward in ((after, True), (before, False)):
        if cursor_id is None:
            continue
        cursor = db.query_one(f"SELECT created_at FROM {table} WHERE {where} AND {id_col} = ?", base + [cursor_id])
        if cursor is None:
            name = "after" if forward else "before"
            raise APIError(400, f"{name}: {cursor_id!r} is not in this list", param=name)
        cmp = ">" if (order == "asc") == forward else "<"
        sql += f" AND (created_at {cmp} ? OR (created_at = ? AND {id_col} {cmp} ?))"
        params += [cursor["created_at"], cursor["created_at"], cursor_id]
    direction = "ASC" if order == "asc" else "DESC"
    rows = db.query(sql + f" ORDER BY created_at {direction}, {id_col} {direction} LIMIT ?", params + [limit + 1])
    return rows[:limit], len(rows) > limit


def list_object(data: list[dict], has_more: bool, id_key: str = "id") -> dict:
    """A page. OpenAI's document requires `first_id` and `last_id` as strings, null not allowed: an
    empty page gives "" (and "" as a cursor means none)."""
    return {"object": "list", "data": data, "first_id": data[0][id_key] if data else "",
            "last_id": data[-1][id_key] if data else "", "has_more": has_more}
