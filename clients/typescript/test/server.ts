/**
 * Starts a real storefront server for the live tests: a fresh SQLite database in a temporary
 * directory, migrated and seeded with the demo catalog and admin, serving on a free loopback port.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { StorefrontClient } from "../src/index.js";

/** The repository root: this file runs from clients/typescript/dist/clients/typescript/test/. */
const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../../../..");

export interface RunningServer {
  readonly baseUrl: string;
  readonly dataDir: string;
  readonly admin: { readonly email: string; readonly password: string };
  /** Stops the server as SIGTERM does (draining) and serves again on the same port and data. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

/** Migrates, seeds and serves; resolves once the server answers calls. */
export async function startServer(): Promise<RunningServer> {
  const command = process.env.STOREFRONT_BIN ?? path.join(REPO_ROOT, ".venv", "bin", "storefront");
  const dataDir = mkdtempSync(path.join(tmpdir(), "storefront-ts-"));
  const port = await freePort();
  const env = {
    ...process.env,
    STOREFRONT_DATA_DIR: dataDir,
    STOREFRONT_GRPC_ADDRESS: `127.0.0.1:${port}`,
    STOREFRONT_METRICS_ADDRESS: "",
    STOREFRONT_LOG_LEVEL: "WARNING",
  };
  for (const step of ["migrate", "seed"]) {
    const result = spawnSync(command, [step], { cwd: REPO_ROOT, env, encoding: "utf8" });
    if (result.status !== 0) {
      throw new Error(`storefront ${step} failed (${result.status}): ${result.stderr}`);
    }
  }
  const baseUrl = `http://127.0.0.1:${port}`;
  const serve = async (): Promise<ChildProcess> => {
    const child = spawn(command, ["serve"], { cwd: REPO_ROOT, env, stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr?.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    await waitUntilServing(baseUrl, child, () => stderr);
    return child;
  };
  let server = await serve();
  return {
    baseUrl,
    dataDir,
    admin: readAdminCredentials(path.join(dataDir, "demo-admin-credentials.txt")),
    async restart() {
      await terminate(server);
      server = await serve();
    },
    async stop() {
      await terminate(server);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Returns a port nothing listens on right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      probe.close(() => {
        if (address === null || typeof address === "string") {
          reject(new Error("no port"));
        } else {
          resolve(address.port);
        }
      });
    });
  });
}

async function waitUntilServing(baseUrl: string, server: ChildProcess, stderr: () => string): Promise<void> {
  const client = new StorefrontClient(baseUrl, { defaultTimeoutMs: 1000, retry: { maxAttempts: 1, initialBackoffMs: 0, maxBackoffMs: 0, multiplier: 1 } });
  try {
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (server.exitCode !== null) {
        throw new Error(`storefront serve exited with ${server.exitCode}: ${stderr()}`);
      }
      try {
        await client.identity.listSigningKeys({});
        return;
      } catch (error) {
        if (Date.now() > deadline) {
          throw new Error(`storefront serve did not answer within 30 s: ${String(error)}\n${stderr()}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
  } finally {
    client.close();
  }
}

function terminate(server: ChildProcess): Promise<void> {
  if (server.exitCode !== null) {
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const kill = setTimeout(() => server.kill("SIGKILL"), 15_000);
    server.once("exit", () => {
      clearTimeout(kill);
      resolve();
    });
    server.kill("SIGTERM");
  });
}

function readAdminCredentials(file: string): { email: string; password: string } {
  const fields = new Map(
    readFileSync(file, "utf8")
      .split("\n")
      .filter((line) => line.includes(": "))
      .map((line) => [line.slice(0, line.indexOf(": ")), line.slice(line.indexOf(": ") + 2)] as const),
  );
  return { email: fields.get("email") ?? "", password: fields.get("password") ?? "" };
}
