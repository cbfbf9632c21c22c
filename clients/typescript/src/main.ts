// Drives the service end to end through the module, as a frontend would, and prints what it
// saw as one JSON line: node build/main.js <baseUrl> <photo.png> [apiKey]
import { readFile } from "node:fs/promises";
import { basename } from "node:path";
import { connect, ServiceError } from "./avatars.js";

const PNG = [0x89, 0x50, 0x4e, 0x47];

async function refused(attempt: () => Promise<unknown>): Promise<ServiceError> {
  try {
    await attempt();
  } catch (error) {
    if (error instanceof ServiceError) return error;
    throw error;
  }
  throw new Error("the request was not refused");
}

async function main(): Promise<void> {
  const [baseUrl, photoPath, apiKey] = process.argv.slice(2);
  if (!baseUrl || !photoPath) throw new Error("usage: main.js <baseUrl> <photo.png> [apiKey]");
  const service = connect(baseUrl, apiKey);

  const info = await service.serviceInfo();
  const { styles, default: defaultStyle } = await service.styles();
  const side = info.limits.minSide;
  const photo = new Blob([await readFile(photoPath)], { type: "image/png" });
  const uploaded = await service.upload(photo, basename(photoPath));

  const started = await service.generate(uploaded.imageName, { width: side, height: side });
  const seen: string[] = [];
  let steps = 0;
  const ended = await service.follow(started, (name, data) => {
    if (seen[seen.length - 1] !== name) seen.push(name); // each run of one event type once
    if (name === "progress" && "node" in data && typeof data.max === "number") steps += 1;
  });
  const avatar = ended.avatars[0];
  if (!avatar) throw new Error(`no avatar: ${ended.status} ${ended.error?.code ?? ""}`);
  const image = await service.download(avatar.url);

  const tooWide = await refused(() =>
    service.generate(uploaded.imageName, {
      width: info.limits.maxSide + info.limits.sideStep,
      height: side,
    }),
  );
  const unknown = await refused(() => service.generate("no-such-photo.png", { width: side, height: side }));
  const again = await refused(() => service.cancel(ended.jobId));

  console.log(
    JSON.stringify({
      authRequired: info.authRequired,
      styles: styles.map((style) => style.name),
      installedStyles: info.styles,
      defaultStyle,
      imageName: uploaded.imageName,
      status: ended.status,
      events: seen,
      progressSteps: steps,
      avatarIsPng: PNG.every((byte, index) => image[index] === byte),
      avatarBytes: image.length,
      errors: [tooWide, unknown, again].map((error) => ({
        status: error.status,
        code: error.code,
        fields: Object.keys(error.details.fields ?? {}),
        said: error.describe(),
      })),
    }),
  );
}

main().catch((error: unknown) => {
  console.error(error instanceof ServiceError ? `${error.status} ${error.code}: ${error.message}` : error);
  process.exit(1);
});
