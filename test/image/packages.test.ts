/**
 * `symbio image build --packages`: an application from Debian's packages
 * (here python3-mpi4py, built against the same Open MPI) ends up in the
 * image every guest boots from. Checked in the root disk itself with
 * debugfs (no mount, no boot), and through the CLI as a user would call it.
 * Costs one more debootstrap (~1.5 min) the first time on a machine.
 */
import t from 'tap';
import { buildImage } from '../../src/image/build-image.js';
import { logger } from '../../src/log.js';
import { runProcess } from '../../src/util/run-process.js';
import { symbioCli } from '../helpers/mpi.js';

const log = logger.child({ test: 'image-packages' });
log.level = process.env.SYMBIO_TEST_LOG ?? 'error';

/** `debugfs -R 'stat PATH'` on the ext4 root disk: the file's inode, or an error line. */
async function statInImage(rootDisk: string, path: string): Promise<string> {
  const r = await runProcess('debugfs', ['-R', `stat ${path}`, rootDisk]);
  return r.stdout + r.stderr;
}

t.test('an added package is in the root disk; the plain image does not have it', async (t) => {
  const cli = await runProcess('node', [symbioCli, 'image', 'build', '--packages', 'python3-mpi4py', '--json']);
  t.equal(cli.code, 0, cli.stderr);
  const img = JSON.parse(cli.stdout) as { id: string; rootDisk: string; manifest: { packages: string[] } };
  t.ok(img.manifest.packages.includes('python3-mpi4py'), 'the manifest lists it');
  t.match(await statInImage(img.rootDisk, '/usr/lib/python3/dist-packages/mpi4py/__init__.py'), /Inode: \d+/, 'mpi4py is on the root disk');
  const plain = await buildImage({ log });
  t.not(plain.id, img.id);
  t.match(await statInImage(plain.rootDisk, '/usr/lib/python3/dist-packages/mpi4py/__init__.py'), /File not found/);
  // the same request again is answered from the cache
  const again = await buildImage({ log, packages: ['python3-mpi4py'] });
  t.equal(again.id, img.id);
});

t.test('a bad package name is refused before anything is built', async (t) => {
  const cli = await runProcess('node', [symbioCli, 'image', 'build', '--packages', 'ok-name,Bad_Name']);
  t.equal(cli.code, 2);
  t.match(cli.stderr, /not Debian package names: Bad_Name/);
});
