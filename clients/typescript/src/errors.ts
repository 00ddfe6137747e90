/**
 * StorefrontError: a failed call with storefront's rich error details (google.rpc.Status) decoded.
 */
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "../../../generated/typescript/google/rpc/error_details_pb.js";

/** The trailing metadata key that carries the server's request id. */
export const REQUEST_ID_KEY = "x-request-id";

/** One BadRequest field violation: the request field path and what is wrong with it. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

/**
 * A failed call. `code` is the gRPC status code, `rawMessage` the server's message (for
 * INVALID_ARGUMENT it names the offending fields), `reason` the ErrorInfo reason (e.g.
 * "FIELD_INVALID", "OUT_OF_STOCK"), `fieldViolations` the BadRequest details and `requestId`
 * the id to quote when asking the operators about this call.
 */
export class StorefrontError extends ConnectError {
  // Connect recognises its errors by this name (or their exact prototype) and wraps anything else
  // as UNKNOWN, so the subclass keeps it; `instanceof StorefrontError` tells the two apart.
  override name = "ConnectError";
  readonly reason: string;
  readonly reasonMetadata: Readonly<Record<string, string>>;
  readonly fieldViolations: readonly FieldViolation[];
  /** Milliseconds the server asks to wait before retrying (RetryInfo), if it said. */
  readonly retryDelayMs: number | undefined;
  readonly requestId: string;

  constructor(error: ConnectError) {
    super(error.rawMessage, error.code, error.metadata, undefined, error.cause);
    // ConnectError's constructor sets its own prototype, which would hide this class's members.
    Object.setPrototypeOf(this, new.target.prototype);
    this.details = error.details;
    this.isWireError = error.isWireError;
    const info = this.findDetails(ErrorInfoSchema)[0];
    this.reason = info?.reason ?? "";
    this.reasonMetadata = { ...(info?.metadata ?? {}) };
    this.fieldViolations = this.findDetails(BadRequestSchema).flatMap((request) =>
      request.fieldViolations.map(({ field, description }) => ({ field, description })),
    );
    const delay = this.findDetails(RetryInfoSchema)[0]?.retryDelay;
    this.retryDelayMs =
      delay === undefined ? undefined : Number(delay.seconds) * 1000 + delay.nanos / 1e6;
    this.requestId = error.metadata.get(REQUEST_ID_KEY) ?? "";
  }

  /** A plain prototype check: ConnectError's own check would accept any ConnectError. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return Function.prototype[Symbol.hasInstance].call(this, value);
  }

  /** Returns `reason` as a StorefrontError (a ConnectError or anything thrown by a call). */
  static of(reason: unknown): StorefrontError {
    return reason instanceof StorefrontError ? reason : new StorefrontError(ConnectError.from(reason));
  }

  /** The status code's name as gRPC writes it, e.g. "INVALID_ARGUMENT". */
  get codeName(): string {
    return codeName(this.code);
  }
}

/** Returns the gRPC name of a status code, e.g. "FAILED_PRECONDITION". */
export function codeName(code: Code): string {
  return (Code[code] ?? "UNKNOWN").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** Turns every error a unary call throws into a StorefrontError; streams pass through as they are. */
export const decodeErrors: Interceptor = (next) => async (request) => {
  if (request.stream) {
    return next(request);
  }
  try {
    return await next(request);
  } catch (error) {
    throw StorefrontError.of(error);
  }
};
