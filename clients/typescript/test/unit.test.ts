/**
 * The client's pure parts: backoff, retry policy checks, session timing and code names.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "../../../generated/typescript/google/rpc/error_details_pb.js";
import { SessionSchema } from "../../../generated/typescript/storefront/v1/identity_service_pb.js";
import {
  DEFAULT_RETRY_POLICY,
  StorefrontError,
  backoffMs,
  checkRetryPolicy,
  codeName,
  sessionFrom,
} from "../src/index.js";

describe("retry policy", () => {
  it("doubles the backoff ceiling up to the maximum, scaled by the jitter", () => {
    assert.equal(backoffMs(DEFAULT_RETRY_POLICY, 1, 0.5), 50);
    assert.equal(backoffMs(DEFAULT_RETRY_POLICY, 2, 1), 200);
    assert.equal(backoffMs(DEFAULT_RETRY_POLICY, 10, 1), 2000);
    assert.equal(backoffMs(DEFAULT_RETRY_POLICY, 3, 0), 0);
  });

  it("refuses policies that retry forever or never wait sensibly", () => {
    const base = DEFAULT_RETRY_POLICY;
    assert.throws(() => checkRetryPolicy({ ...base, maxAttempts: 0 }), RangeError);
    assert.throws(() => checkRetryPolicy({ ...base, maxAttempts: 11 }), RangeError);
    assert.throws(() => checkRetryPolicy({ ...base, maxBackoffMs: 10, initialBackoffMs: 20 }), RangeError);
    assert.throws(() => checkRetryPolicy({ ...base, multiplier: 0.5 }), RangeError);
    assert.equal(checkRetryPolicy(base), base);
  });
});

describe("sessionFrom", () => {
  it("renews a minute early, or halfway through a shorter life", () => {
    const now = 1_000_000;
    const long = sessionFrom(
      create(SessionSchema, { accessToken: "a", accessTokenExpireTime: timestampFromMs(now + 900_000) }),
      now,
      60_000,
    );
    assert.equal(long.refreshAt, now + 840_000);
    const short = sessionFrom(
      create(SessionSchema, { accessToken: "a", accessTokenExpireTime: timestampFromMs(now + 30_000) }),
      now,
      60_000,
    );
    assert.equal(short.refreshAt, now + 15_000);
    const endless = sessionFrom(create(SessionSchema, { accessToken: "a" }), now, 60_000);
    assert.equal(endless.refreshAt, undefined);
  });
});

describe("StorefrontError", () => {
  it("exposes code, reason, field violations and request id of a ConnectError", () => {
    const wire = new ConnectError(
      "request_id: must be a UUID",
      Code.InvalidArgument,
      { "x-request-id": "3f1c" },
      [
        { desc: ErrorInfoSchema, value: { reason: "FIELD_INVALID", domain: "storefront", metadata: { n: "1" } } },
        { desc: BadRequestSchema, value: { fieldViolations: [{ field: "request_id", description: "must be a UUID" }] } },
      ],
    );
    const error = StorefrontError.of(wire);
    assert.ok(error instanceof ConnectError);
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.equal(error.rawMessage, "request_id: must be a UUID");
    assert.equal(error.reason, "FIELD_INVALID");
    assert.deepEqual(error.reasonMetadata, { n: "1" });
    assert.deepEqual(error.fieldViolations, [{ field: "request_id", description: "must be a UUID" }]);
    assert.equal(error.requestId, "3f1c");
    assert.equal(StorefrontError.of(error), error);
  });

  it("names every code as gRPC does", () => {
    assert.equal(codeName(Code.DeadlineExceeded), "DEADLINE_EXCEEDED");
    assert.equal(codeName(Code.FailedPrecondition), "FAILED_PRECONDITION");
    assert.equal(codeName(Code.Unauthenticated), "UNAUTHENTICATED");
  });
});
