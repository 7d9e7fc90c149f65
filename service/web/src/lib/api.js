// JSON over fetch, with the contract's {"error", "detail"} turned into an ApiError.

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error || `http_${status}`;
    this.detail = body?.detail || "";
    this.retryAfterMs = body?.retry_after_ms ?? null;
  }
}

/** Call the API; resolves to the JSON body, rejects with ApiError (status 0 = network). */
export async function api(path, { method = "GET", body, token, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (error) {
    if (error?.name === "AbortError") throw error;
    throw new ApiError(0, { error: "network", detail: "The server could not be reached." });
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export const userPath = (name) => `/api/users/${encodeURIComponent(name)}`;
