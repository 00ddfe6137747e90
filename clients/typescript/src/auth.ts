/**
 * Keeps the current session fresh and attaches its access token to every call.
 */
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client, type Interceptor } from "@connectrpc/connect";
import {
  type IdentityService,
  type Session as SessionMessage,
} from "../../../generated/typescript/storefront/v1/identity_service_pb.js";

/** Renew a session this many milliseconds before its access token expires (at most half its life). */
export const DEFAULT_REFRESH_BEFORE_MS = 60_000;

/** The tokens in use, with times in milliseconds on the client's clock (Unix time by default). */
export interface Session {
  readonly accessToken: string;
  readonly refreshToken: string;
  readonly expiresAt: number | undefined;
  readonly refreshAt: number | undefined;
}

/** Returns the session, due for renewal `refreshBeforeMs` (at most half its life) early. */
export function sessionFrom(message: SessionMessage, now: number, refreshBeforeMs: number): Session {
  const expire = message.accessTokenExpireTime;
  if (expire === undefined) {
    return { accessToken: message.accessToken, refreshToken: message.refreshToken, expiresAt: undefined, refreshAt: undefined };
  }
  const expiresAt = timestampMs(expire);
  const lead = Math.min(refreshBeforeMs, Math.max(expiresAt - now, 0) / 2);
  return {
    accessToken: message.accessToken,
    refreshToken: message.refreshToken,
    expiresAt,
    refreshAt: expiresAt - lead,
  };
}

interface ServiceCredentials {
  readonly clientId: string;
  readonly clientSecret: string;
}

/**
 * Holds the current session and renews it before it expires: user sessions with RefreshSession,
 * service accounts by issuing a new token. Concurrent calls share one renewal.
 */
export class SessionManager {
  private current: Session | undefined;
  private credentials: ServiceCredentials | undefined;
  private renewal: Promise<Session | undefined> | undefined;

  /** `identity` must send no token (renewal never recurses); `clock` returns milliseconds. */
  constructor(
    private readonly identity: Client<typeof IdentityService>,
    private readonly clock: () => number,
    private readonly refreshBeforeMs: number = DEFAULT_REFRESH_BEFORE_MS,
  ) {
    if (refreshBeforeMs < 0) {
      throw new RangeError("refreshBeforeMs must not be negative");
    }
  }

  /** The current session, or undefined when signed out. */
  get session(): Session | undefined {
    return this.current;
  }

  /** Replaces the current session with a user session. */
  start(message: SessionMessage): Session {
    this.credentials = undefined;
    this.renewal = undefined;
    this.current = this.wrap(message);
    return this.current;
  }

  /** Issues a service token now and re-issues it whenever it is due. */
  async startService(clientId: string, clientSecret: string): Promise<Session> {
    const credentials = { clientId, clientSecret };
    const session = await this.issue(credentials);
    this.credentials = credentials;
    this.renewal = undefined;
    this.current = session;
    return session;
  }

  /** Forgets the session and any service credentials; returns the forgotten session. */
  clear(): Session | undefined {
    const session = this.current;
    this.current = undefined;
    this.credentials = undefined;
    this.renewal = undefined;
    return session;
  }

  /** Returns a valid access token, renewing the session first if it is due. */
  async accessToken(): Promise<string | undefined> {
    const session = this.current;
    if (session === undefined) {
      return undefined;
    }
    if (session.refreshAt === undefined || this.clock() < session.refreshAt) {
      return session.accessToken;
    }
    this.renewal ??= this.renew(session).finally(() => {
      this.renewal = undefined;
    });
    return (await this.renewal)?.accessToken;
  }

  private async renew(session: Session): Promise<Session | undefined> {
    try {
      let renewed: Session;
      if (this.credentials !== undefined) {
        renewed = await this.issue(this.credentials);
      } else if (session.refreshToken === "") {
        return session; // nothing to renew with; the server will say when it expires
      } else {
        const response = await this.identity.refreshSession({ refreshToken: session.refreshToken });
        if (response.session === undefined) {
          throw new ConnectError("RefreshSession answered without a session", Code.Internal);
        }
        renewed = this.wrap(response.session);
      }
      if (this.current === session) {
        this.current = renewed; // unless someone signed in or out meanwhile
      }
      return this.current;
    } catch (error) {
      if (ConnectError.from(error).code === Code.Unauthenticated) {
        if (this.current === session) {
          this.clear(); // the session is over: signed out
        }
        throw error;
      }
      if (session.expiresAt !== undefined && this.clock() >= session.expiresAt) {
        throw error;
      }
      return session; // keep the still-valid token; the next call tries again
    }
  }

  private async issue(credentials: ServiceCredentials): Promise<Session> {
    const response = await this.identity.issueServiceToken(credentials);
    if (response.session === undefined) {
      throw new ConnectError("IssueServiceToken answered without a session", Code.Internal);
    }
    return this.wrap(response.session);
  }

  private wrap(message: SessionMessage): Session {
    return sessionFrom(message, this.clock(), this.refreshBeforeMs);
  }
}

/** Adds `authorization: Bearer <token>` to calls that do not carry their own. */
export function attachToken(accessToken: () => Promise<string | undefined>): Interceptor {
  return (next) => async (request) => {
    if (!request.header.has("authorization")) {
      const token = await accessToken();
      if (token !== undefined) {
        request.header.set("authorization", `Bearer ${token}`);
      }
    }
    return next(request);
  };
}
