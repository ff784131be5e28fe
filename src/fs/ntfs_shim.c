/*
 * The C side of the NTFS adapter (src/fs/ntfs.rs): a libntfs-3g device whose reads and
 * writes go back to Rust through function pointers, and one function per filesystem
 * operation, each opening the inodes it needs and closing them before it returns.
 *
 * What this file owns: every pointer and length that comes out of libntfs-3g is checked
 * here, so the Rust side only sees plain numbers, byte strings it frees through
 * strata_ntfs_free, and negative errnos. Semantics follow ntfs-3g's own FUSE driver
 * (src/ntfs-3g.c, src/lowntfs-3g.c) mounted with default options: no user mapping
 * (every file 0777, owned by root), case-sensitive names, metafiles hidden, hidden files
 * shown, relatime, Interix symlinks. Checks the kernel's VFS makes before it calls a FUSE
 * filesystem (EISDIR, ENOTDIR, EEXIST) are made here too, since nothing sits above us.
 *
 * Rules kept throughout: an inode is never open twice at once (libntfs-3g keeps no table
 * of open inodes, so two copies would overwrite each other), and a directory is closed
 * before the file whose name it indexes (closing the file updates its name in the
 * parent's index, which opens the parent).
 */

/* libntfs-3g's headers need these first: without its config.h they assume them. */
#include <time.h>
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <linux/fs.h>

#include <ntfs-3g/types.h>
#include <ntfs-3g/attrib.h>
#include <ntfs-3g/device.h>
#include <ntfs-3g/dir.h>
#include <ntfs-3g/ea.h>
#include <ntfs-3g/inode.h>
#include <ntfs-3g/layout.h>
#include <ntfs-3g/logging.h>
#include <ntfs-3g/reparse.h>
#include <ntfs-3g/unistr.h>
#include <ntfs-3g/volume.h>

/* How the Rust side reads and writes the device. Each returns bytes done or -errno. */
struct strata_ntfs_io {
	void *ctx;
	int64_t (*pread)(void *ctx, void *buf, int64_t count, int64_t offset);
	int64_t (*pwrite)(void *ctx, const void *buf, int64_t count, int64_t offset);
	int64_t (*size)(void *ctx);
	int (*sync)(void *ctx);
};

struct strata_ntfs {
	struct strata_ntfs_io io;
	struct ntfs_device *dev;
	ntfs_volume *vol;
	int64_t pos; /* for the device's seek/read/write */
	int read_only;
};

/* What lstat says, before the Rust side turns it into a Stat. Times are raw NTFS times. */
struct strata_ntfs_stat {
	uint64_t ino;
	uint32_t mode;
	uint32_t nlink;
	uint64_t size;
	uint64_t blocks;
	int64_t atime;
	int64_t mtime;
	int64_t ctime;
	uint32_t rdev_major;
	uint32_t rdev_minor;
};

struct strata_ntfs_vfs {
	uint64_t cluster_size;
	uint64_t nr_clusters;
	uint64_t free_clusters;
	uint64_t files;
	uint64_t ffree;
	uint64_t sector_size;
};

typedef int (*strata_ntfs_dirent_cb)(void *ctx, const char *name, size_t len,
		uint64_t ino, unsigned dt_type);

/* What ntfs-3g reports for a reparse point it has no plugin for. */
static const char bad_reparse_fmt[] = "unsupported reparse tag 0x%08lx";
#define BAD_REPARSE_LEN 34

/* Absolute junction and symlink targets are given relative to this filesystem's root:
 * the mount table places it. */
static const char mount_point[] = "";

/* ---- the device ---- */

static struct strata_ntfs *dev_handle(struct ntfs_device *dev)
{
	return (struct strata_ntfs *)dev->d_private;
}

static int dev_open(struct ntfs_device *dev, int flags)
{
	struct strata_ntfs *h = dev_handle(dev);

	if (NDevOpen(dev)) {
		errno = EBUSY;
		return -1;
	}
	if ((flags & O_ACCMODE) != O_RDONLY && h->read_only) {
		errno = EROFS;
		return -1;
	}
	if ((flags & O_ACCMODE) == O_RDONLY)
		NDevSetReadOnly(dev);
	else
		NDevClearReadOnly(dev);
	h->pos = 0;
	NDevSetOpen(dev);
	return 0;
}

static int dev_close(struct ntfs_device *dev)
{
	NDevClearOpen(dev);
	return 0;
}

static s64 dev_seek(struct ntfs_device *dev, s64 offset, int whence)
{
	struct strata_ntfs *h = dev_handle(dev);
	int64_t base;

	switch (whence) {
	case SEEK_SET:
		base = 0;
		break;
	case SEEK_CUR:
		base = h->pos;
		break;
	case SEEK_END:
		base = h->io.size(h->io.ctx);
		if (base < 0) {
			errno = (int)-base;
			return -1;
		}
		break;
	default:
		errno = EINVAL;
		return -1;
	}
	if ((offset > 0 && base > INT64_MAX - offset) || base + offset < 0) {
		errno = EINVAL;
		return -1;
	}
	h->pos = base + offset;
	return h->pos;
}

static s64 dev_pread(struct ntfs_device *dev, void *buf, s64 count, s64 offset)
{
	struct strata_ntfs *h = dev_handle(dev);
	int64_t r;

	if (count < 0 || offset < 0) {
		errno = EINVAL;
		return -1;
	}
	r = h->io.pread(h->io.ctx, buf, count, offset);
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return r;
}

static s64 dev_pwrite(struct ntfs_device *dev, const void *buf, s64 count, s64 offset)
{
	struct strata_ntfs *h = dev_handle(dev);
	int64_t r;

	if (NDevReadOnly(dev) || h->read_only) {
		errno = EROFS;
		return -1;
	}
	if (count < 0 || offset < 0) {
		errno = EINVAL;
		return -1;
	}
	r = h->io.pwrite(h->io.ctx, buf, count, offset);
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	NDevSetDirty(dev);
	return r;
}

static s64 dev_read(struct ntfs_device *dev, void *buf, s64 count)
{
	struct strata_ntfs *h = dev_handle(dev);
	s64 r = dev_pread(dev, buf, count, h->pos);

	if (r > 0)
		h->pos += r;
	return r;
}

static s64 dev_write(struct ntfs_device *dev, const void *buf, s64 count)
{
	struct strata_ntfs *h = dev_handle(dev);
	s64 r = dev_pwrite(dev, buf, count, h->pos);

	if (r > 0)
		h->pos += r;
	return r;
}

static int dev_sync(struct ntfs_device *dev)
{
	struct strata_ntfs *h = dev_handle(dev);
	int r;

	if (NDevReadOnly(dev))
		return 0;
	r = h->io.sync(h->io.ctx);
	if (r < 0) {
		errno = -r;
		return -1;
	}
	NDevClearDirty(dev);
	return 0;
}

static int dev_stat(struct ntfs_device *dev, struct stat *st)
{
	struct strata_ntfs *h = dev_handle(dev);
	int64_t size = h->io.size(h->io.ctx);

	if (size < 0) {
		errno = (int)-size;
		return -1;
	}
	memset(st, 0, sizeof(*st));
	st->st_mode = S_IFREG | 0600;
	st->st_size = size;
	st->st_blksize = 4096;
	return 0;
}

static int dev_ioctl(struct ntfs_device *dev, unsigned long request, void *argp)
{
	struct strata_ntfs *h = dev_handle(dev);
	int64_t size;

	switch (request) {
	case BLKGETSIZE64:
		size = h->io.size(h->io.ctx);
		if (size < 0) {
			errno = (int)-size;
			return -1;
		}
		*(uint64_t *)argp = (uint64_t)size;
		return 0;
	case BLKSSZGET:
		*(int *)argp = 512;
		return 0;
	default:
		errno = EOPNOTSUPP;
		return -1;
	}
}

static struct ntfs_device_operations strata_dev_ops = {
	.open = dev_open,
	.close = dev_close,
	.seek = dev_seek,
	.read = dev_read,
	.write = dev_write,
	.pread = dev_pread,
	.pwrite = dev_pwrite,
	.sync = dev_sync,
	.stat = dev_stat,
	.ioctl = dev_ioctl,
};

/* ---- logging: libntfs-3g's messages go to the Rust side (tracing) ---- */

static void (*log_sink)(uint32_t level, const char *msg);

static int log_handler(const char *function, const char *file, int line, u32 level,
		void *data, const char *format, va_list args)
{
	char buf[1024];
	int n;
	size_t len;

	(void)function;
	(void)file;
	(void)line;
	(void)data;
	if (!log_sink)
		return 0;
	n = vsnprintf(buf, sizeof(buf), format, args);
	if (n < 0)
		return 0;
	len = strlen(buf);
	if (level & NTFS_LOG_LEVEL_PERROR) {
		/* errno is the one the message is about */
		snprintf(buf + len, sizeof(buf) - len, ": %s", strerror(errno));
		len = strlen(buf);
	}
	while (len && buf[len - 1] == '\n')
		buf[--len] = 0;
	log_sink(level, buf);
	return n;
}

void strata_ntfs_set_logger(void (*sink)(uint32_t level, const char *msg))
{
	int saved = errno;

	log_sink = sink;
	ntfs_log_set_handler(log_handler);
	ntfs_log_set_levels(NTFS_LOG_LEVEL_INFO | NTFS_LOG_LEVEL_WARNING |
			NTFS_LOG_LEVEL_ERROR | NTFS_LOG_LEVEL_PERROR |
			NTFS_LOG_LEVEL_CRITICAL);
	errno = saved;
}

/* ---- helpers ---- */

static int err_or(int fallback)
{
	return errno ? -errno : -fallback;
}

void strata_ntfs_free(void *p)
{
	free(p);
}

/* A name (one path component, UTF-8, no NUL) as libntfs-3g's UTF-16; 0 or -errno. */
static int to_uname(const char *name, ntfschar **uname, int *len)
{
	int n;

	*uname = NULL;
	errno = 0;
	n = ntfs_mbstoucs(name, uname);
	if (n < 0)
		return err_or(EILSEQ);
	if (n == 0) {
		free(*uname);
		*uname = NULL;
		return -EINVAL;
	}
	if (n > NTFS_MAX_NAME_LEN) {
		free(*uname);
		*uname = NULL;
		return -ENAMETOOLONG;
	}
	*len = n;
	return 0;
}

static ntfs_inode *open_ino(struct strata_ntfs *h, uint64_t ino, int *res)
{
	ntfs_inode *ni;

	/* MFT record numbers are 48 bits; 0 and 1 are $MFT and $MFTMirr, never files */
	if (ino > 0xffffffffffffULL || ino <= 1) {
		*res = -ENOENT;
		return NULL;
	}
	errno = 0;
	ni = ntfs_inode_open(h->vol, (MFT_REF)ino);
	if (!ni) {
		*res = err_or(EIO);
		if (*res == -EINVAL)
			*res = -ENOENT;
		return NULL;
	}
	if (!ni->mrec) {
		ntfs_inode_close(ni);
		*res = -EIO;
		return NULL;
	}
	return ni;
}

static void close_ino(ntfs_inode *ni, int *res)
{
	if (!ni)
		return;
	errno = 0;
	if (ntfs_inode_close(ni) && !*res)
		*res = err_or(EIO);
}

static int is_ntfs_dir(ntfs_inode *ni)
{
	return (ni->mrec->flags & MFT_RECORD_IS_DIRECTORY) != 0;
}

/* A directory as POSIX sees it: junctions and other reparse points are not. */
static int is_posix_dir(ntfs_inode *ni)
{
	return is_ntfs_dir(ni) && !(ni->flags & FILE_ATTR_REPARSE_POINT);
}

/* The target of an Interix symlink (2-byte aligned in a malloc'd buffer). */
static const ntfschar *intx_target(const INTX_FILE *intx)
{
	return (const ntfschar *)((const u8 *)intx + offsetof(INTX_FILE, target));
}

static void set_archive(ntfs_inode *ni)
{
	ni->flags |= FILE_ATTR_ARCHIVE;
}

/* ntfs-3g's relatime: atime moves only when older than mtime or ctime. */
static void touch_atime(struct strata_ntfs *h, ntfs_inode *ni)
{
	if (h->read_only)
		return;
	if (sle64_to_cpu(ni->last_access_time) >= sle64_to_cpu(ni->last_data_change_time) &&
	    sle64_to_cpu(ni->last_access_time) >= sle64_to_cpu(ni->last_mft_change_time))
		return;
	ntfs_inode_update_times(ni, NTFS_UPDATE_ATIME);
}

/* MFT number of `uname` in the open directory `dir_ni`; 0 or -errno. */
static int lookup_in(ntfs_inode *dir_ni, const ntfschar *uname, int ulen, uint64_t *ino)
{
	u64 ref;

	errno = 0;
	ref = ntfs_inode_lookup_by_name(dir_ni, uname, ulen);
	if (ref == (u64)-1)
		return err_or(ENOENT);
	/* never hand out $MFT or $MFTMirr, as ntfs-3g does not */
	if (MREF(ref) <= 1)
		return -ENOENT;
	*ino = MREF(ref);
	return 0;
}

/* ---- volume ---- */

static s64 free_mft_records(ntfs_volume *vol)
{
	ntfs_attr *na = vol->mftbmp_na;
	s64 nr_free = ntfs_attr_get_free_bits(na);

	if (nr_free >= 0)
		nr_free += (na->allocated_size - na->data_size) << 3;
	return nr_free;
}

/* Mounts the volume; 0 and *out, or -errno (the reason was logged). */
int strata_ntfs_mount(const struct strata_ntfs_io *io, int read_only, struct strata_ntfs **out)
{
	struct strata_ntfs *h;
	int err;

	*out = NULL;
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->io = *io;
	h->read_only = read_only ? 1 : 0;
	h->dev = ntfs_device_alloc("strata", 0, &strata_dev_ops, h);
	if (!h->dev) {
		err = err_or(ENOMEM);
		free(h);
		return err;
	}
	errno = 0;
	/* No NTFS_MNT_RECOVER: an unclean $LogFile is refused (EOPNOTSUPP), not reset; no
	 * NTFS_MNT_MAY_RDONLY: a hibernated volume is refused (EPERM), not mounted ro. */
	h->vol = ntfs_device_mount(h->dev, read_only ? NTFS_MNT_RDONLY : 0);
	if (!h->vol) {
		err = err_or(EIO);
		NDevClearOpen(h->dev);
		ntfs_device_free(h->dev);
		free(h);
		return err;
	}
	if (!h->vol->mftbmp_na || !h->vol->lcnbmp_na || !h->vol->upcase) {
		err = -EIO;
		goto fail;
	}
	/* ntfs-3g's defaults: metafiles hidden, hidden files shown, dot files not hidden */
	ntfs_set_shown_files(h->vol, FALSE, TRUE, FALSE);
	/* ntfs-3g's default "compression": new files in compressed directories compress */
	NVolSetCompression(h->vol);
	h->vol->abs_mnt_point = mount_point;
	errno = 0;
	if (ntfs_volume_get_free_space(h->vol)) {
		err = err_or(EIO);
		goto fail;
	}
	h->vol->free_mft_records = free_mft_records(h->vol);
	if (h->vol->free_mft_records < 0) {
		err = err_or(EIO);
		goto fail;
	}
	*out = h;
	return 0;
fail:
	ntfs_umount(h->vol, FALSE);
	free(h);
	return err;
}

/* Writes back the volume's own metadata inodes, as unmount does. */
int strata_ntfs_sync(struct strata_ntfs *h)
{
	ntfs_volume *vol = h->vol;
	int res = 0;

	if (h->read_only)
		return 0;
	errno = 0;
	if (vol->lcnbmp_ni && NInoDirty(vol->lcnbmp_ni) && ntfs_inode_sync(vol->lcnbmp_ni))
		res = err_or(EIO);
	if (vol->mft_ni && NInoDirty(vol->mft_ni) && ntfs_inode_sync(vol->mft_ni) && !res)
		res = err_or(EIO);
	if (vol->mftmirr_ni && NInoDirty(vol->mftmirr_ni) &&
	    ntfs_inode_sync(vol->mftmirr_ni) && !res)
		res = err_or(EIO);
	if (vol->vol_ni && NInoDirty(vol->vol_ni) && ntfs_inode_sync(vol->vol_ni) && !res)
		res = err_or(EIO);
	if (ntfs_device_sync(vol->dev) && !res)
		res = err_or(EIO);
	return res;
}

/* Unmounts and frees everything, whatever happens; 0 or -errno. */
int strata_ntfs_umount(struct strata_ntfs *h)
{
	int res = 0;

	if (!h)
		return 0;
	errno = 0;
	if (h->vol && ntfs_umount(h->vol, FALSE))
		res = err_or(EIO);
	free(h);
	return res;
}

/* The volume label as libntfs-3g decoded it (UTF-8), malloc'd; NULL when none. */
char *strata_ntfs_label(struct strata_ntfs *h)
{
	if (!h->vol->vol_name || !h->vol->vol_name[0])
		return NULL;
	return strdup(h->vol->vol_name);
}

int strata_ntfs_statvfs(struct strata_ntfs *h, struct strata_ntfs_vfs *out)
{
	ntfs_volume *vol = h->vol;
	s64 size;
	int delta_bits;

	memset(out, 0, sizeof(*out));
	out->cluster_size = vol->cluster_size;
	out->nr_clusters = vol->nr_clusters > 0 ? (uint64_t)vol->nr_clusters : 0;
	out->sector_size = vol->sector_size;
	size = vol->free_clusters;
	if (size < 0)
		size = 0;
	out->free_clusters = (uint64_t)size;
	/* as ntfs-3g counts them: MFT records that fit in the free space, plus free ones */
	delta_bits = vol->cluster_size_bits - vol->mft_record_size_bits;
	if (delta_bits >= 0)
		size <<= delta_bits;
	else
		size >>= -delta_bits;
	out->files = (uint64_t)((vol->mftbmp_na->allocated_size << 3) + size);
	size += vol->free_mft_records;
	if (size < 0)
		size = 0;
	out->ffree = (uint64_t)size;
	return 0;
}

/* Bytes of $Bitmap from `offset`; returns the count read or -errno. */
int64_t strata_ntfs_read_bitmap(struct strata_ntfs *h, uint64_t offset, void *buf, size_t len)
{
	s64 r;

	if (offset > INT64_MAX || len > INT64_MAX)
		return -EINVAL;
	errno = 0;
	r = ntfs_attr_pread(h->vol->lcnbmp_na, (s64)offset, (s64)len, buf);
	if (r < 0)
		return err_or(EIO);
	return r;
}

/* ---- inodes ---- */

int strata_ntfs_lookup(struct strata_ntfs *h, uint64_t dir, const char *name, uint64_t *ino)
{
	ntfs_inode *dir_ni;
	ntfschar *uname;
	int ulen, res = 0;

	res = to_uname(name, &uname, &ulen);
	if (res)
		return res;
	dir_ni = open_ino(h, dir, &res);
	if (dir_ni) {
		if (!is_ntfs_dir(dir_ni))
			res = -ENOTDIR;
		else
			res = lookup_in(dir_ni, uname, ulen, ino);
		close_ino(dir_ni, &res);
	}
	free(uname);
	return res;
}

/* The reparse tag of an inode that has one, 0 when it cannot be read. */
static le32 reparse_tag(ntfs_inode *ni)
{
	REPARSE_POINT *rp = ntfs_get_reparse_point(ni);
	le32 tag = const_cpu_to_le32(0);

	if (rp) {
		tag = rp->reparse_tag;
		free(rp);
	}
	return tag;
}

/* lstat of a reparse point, as ntfs-3g's junction and WSL plugins give it. */
static int stat_reparse(ntfs_inode *ni, struct strata_ntfs_stat *st)
{
	REPARSE_POINT *rp;
	char *target;
	dev_t rdev = 0;

	rp = ntfs_get_reparse_point(ni);
	if (!rp) {
		/* no plugin answers: shown as a symlink to a message */
		st->mode = S_IFLNK;
		st->size = BAD_REPARSE_LEN;
		st->blocks = (ni->allocated_size + 511) >> 9;
		return 0;
	}
	switch (rp->reparse_tag) {
	case IO_REPARSE_TAG_MOUNT_POINT:
	case IO_REPARSE_TAG_SYMLINK:
	case IO_REPARSE_TAG_LX_SYMLINK:
		errno = 0;
		target = ntfs_make_symlink(ni, mount_point);
		st->mode = S_IFLNK;
		st->size = target ? strlen(target) : BAD_REPARSE_LEN;
		st->blocks = (ni->allocated_size + 511) >> 9;
		free(target);
		break;
	case IO_REPARSE_TAG_AF_UNIX:
	case IO_REPARSE_TAG_LX_FIFO:
	case IO_REPARSE_TAG_LX_CHR:
	case IO_REPARSE_TAG_LX_BLK:
		if (ntfs_reparse_check_wsl(ni, rp)) {
			st->mode = S_IFLNK;
			st->size = BAD_REPARSE_LEN;
			break;
		}
		if (rp->reparse_tag == IO_REPARSE_TAG_AF_UNIX)
			st->mode = S_IFSOCK;
		else if (rp->reparse_tag == IO_REPARSE_TAG_LX_FIFO)
			st->mode = S_IFIFO;
		else {
			st->mode = rp->reparse_tag == IO_REPARSE_TAG_LX_CHR ? S_IFCHR : S_IFBLK;
			if (ntfs_ea_check_wsldev(ni, &rdev)) {
				st->mode = S_IFLNK;
				st->size = BAD_REPARSE_LEN;
				rdev = 0;
			}
		}
		st->rdev_major = major(rdev);
		st->rdev_minor = minor(rdev);
		break;
	default:
		st->mode = S_IFLNK;
		st->size = BAD_REPARSE_LEN;
		st->blocks = (ni->allocated_size + 511) >> 9;
		break;
	}
	free(rp);
	return 0;
}

/* A regular file with the system flag may be an Interix FIFO, socket, device or symlink. */
static int stat_interix(ntfs_inode *ni, struct strata_ntfs_stat *st)
{
	ntfs_attr *na;
	INTX_FILE *intx;
	int res = 0;

	na = ntfs_attr_open(ni, AT_DATA, AT_UNNAMED, 0);
	if (!na)
		return 0; /* ntfs-3g: no data, a plain file */
	if (!(ni->flags & FILE_ATTR_HIDDEN)) {
		if (na->data_size == 0)
			st->mode = S_IFIFO;
		if (na->data_size == 1)
			st->mode = S_IFSOCK;
	}
	if (na->data_size > (s64)sizeof(INTX_FILE_TYPES) &&
	    na->data_size <= (s64)(sizeof(INTX_FILE_TYPES) + sizeof(ntfschar) * PATH_MAX)) {
		intx = malloc((size_t)na->data_size);
		if (!intx) {
			res = -ENOMEM;
			goto out;
		}
		errno = 0;
		if (ntfs_attr_pread(na, 0, na->data_size, intx) != na->data_size) {
			res = err_or(EIO);
			free(intx);
			goto out;
		}
		if ((intx->magic == INTX_BLOCK_DEVICE || intx->magic == INTX_CHARACTER_DEVICE) &&
		    na->data_size == (s64)offsetof(INTX_FILE, device_end)) {
			st->mode = intx->magic == INTX_BLOCK_DEVICE ? S_IFBLK : S_IFCHR;
			st->rdev_major = (uint32_t)le64_to_cpu(intx->major);
			st->rdev_minor = (uint32_t)le64_to_cpu(intx->minor);
		}
		if (intx->magic == INTX_SYMBOLIC_LINK) {
			char *target = NULL;
			int len = ntfs_ucstombs(intx_target(intx),
					(na->data_size - offsetof(INTX_FILE, target)) /
						sizeof(ntfschar),
					&target, 0);
			if (len < 0) {
				res = err_or(EILSEQ);
				free(intx);
				goto out;
			}
			free(target);
			st->mode = S_IFLNK;
			st->size = (uint64_t)len;
		}
		free(intx);
	}
out:
	ntfs_attr_close(na);
	return res;
}

static int stat_open(ntfs_inode *ni, struct strata_ntfs_stat *st)
{
	ntfs_attr *na;
	int res = 0;

	memset(st, 0, sizeof(*st));
	st->ino = ni->mft_no;
	st->nlink = le16_to_cpu(ni->mrec->link_count);
	if (ni->flags & FILE_ATTR_REPARSE_POINT) {
		res = stat_reparse(ni, st);
	} else if (is_ntfs_dir(ni)) {
		st->mode = S_IFDIR;
		if (!test_nino_flag(ni, KnownSize)) {
			na = ntfs_attr_open(ni, AT_INDEX_ALLOCATION, NTFS_INDEX_I30, 4);
			if (na) {
				ni->data_size = na->data_size;
				ni->allocated_size = na->allocated_size;
				set_nino_flag(ni, KnownSize);
				ntfs_attr_close(na);
			}
		}
		st->size = ni->data_size > 0 ? (uint64_t)ni->data_size : 0;
		st->blocks = ni->allocated_size > 0 ? (uint64_t)ni->allocated_size >> 9 : 0;
		st->nlink = 1; /* as ntfs-3g says without posix_nlink: find(1) relies on it */
	} else {
		st->mode = S_IFREG;
		st->size = ni->data_size > 0 ? (uint64_t)ni->data_size : 0;
		st->blocks = ni->allocated_size > 0 ? ((uint64_t)ni->allocated_size + 511) >> 9 : 0;
		if (ni->flags & FILE_ATTR_SYSTEM)
			res = stat_interix(ni, st);
	}
	/* no user mapping: everything 0777 (masks are 0), symlinks too */
	st->mode |= 0777;
	st->atime = sle64_to_cpu(ni->last_access_time);
	st->mtime = sle64_to_cpu(ni->last_data_change_time);
	st->ctime = sle64_to_cpu(ni->last_mft_change_time);
	return res;
}

int strata_ntfs_stat(struct strata_ntfs *h, uint64_t ino, struct strata_ntfs_stat *st)
{
	ntfs_inode *ni;
	int res = 0;

	ni = open_ino(h, ino, &res);
	if (!ni)
		return res;
	res = stat_open(ni, st);
	close_ino(ni, &res);
	return res;
}

/* The parent directory of `ino` (from its first non-DOS name); 0 or -errno. */
int strata_ntfs_parent(struct strata_ntfs *h, uint64_t ino, uint64_t *parent)
{
	ntfs_inode *ni;
	ntfs_attr_search_ctx *ctx;
	FILE_NAME_ATTR *fn;
	int res = 0, found = 0;

	if (ino == FILE_root) {
		*parent = FILE_root;
		return 0;
	}
	ni = open_ino(h, ino, &res);
	if (!ni)
		return res;
	ctx = ntfs_attr_get_search_ctx(ni, NULL);
	if (!ctx) {
		res = err_or(ENOMEM);
		goto out;
	}
	while (!ntfs_attr_lookup(AT_FILE_NAME, AT_UNNAMED, 0, CASE_SENSITIVE, 0, NULL, 0, ctx)) {
		if (ctx->attr->non_resident ||
		    le32_to_cpu(ctx->attr->value_length) < sizeof(FILE_NAME_ATTR) ||
		    (u32)le16_to_cpu(ctx->attr->value_offset) +
				    le32_to_cpu(ctx->attr->value_length) >
			    le32_to_cpu(ctx->attr->length))
			continue;
		fn = (FILE_NAME_ATTR *)((u8 *)ctx->attr + le16_to_cpu(ctx->attr->value_offset));
		if (fn->file_name_type == FILE_NAME_DOS)
			continue;
		*parent = MREF_LE(fn->parent_directory);
		found = 1;
		break;
	}
	ntfs_attr_put_search_ctx(ctx);
	if (!found)
		res = -EIO;
out:
	close_ino(ni, &res);
	return res;
}

struct dir_fill {
	strata_ntfs_dirent_cb cb;
	void *ctx;
	int err;
};

static int dir_filler(void *dirent, const ntfschar *name, const int name_len,
		const int name_type, const s64 pos, const MFT_REF mref, const unsigned dt_type)
{
	struct dir_fill *fill = dirent;
	char *mbs = NULL;
	int len, r;

	(void)pos;
	if (name_type == FILE_NAME_DOS)
		return 0;
	len = ntfs_ucstombs(name, name_len, &mbs, 0);
	if (len < 0) {
		/* ntfs-3g fails the listing the same way */
		fill->err = err_or(EILSEQ);
		return -1;
	}
	if ((len == 1 && mbs[0] == '.') || (len == 2 && mbs[0] == '.' && mbs[1] == '.')) {
		free(mbs);
		return 0;
	}
	r = fill->cb(fill->ctx, mbs, (size_t)len, MREF(mref), dt_type);
	free(mbs);
	if (r) {
		fill->err = -ENOMEM;
		return -1;
	}
	return 0;
}

int strata_ntfs_readdir(struct strata_ntfs *h, uint64_t dir, strata_ntfs_dirent_cb cb, void *ctx)
{
	ntfs_inode *ni;
	struct dir_fill fill = { cb, ctx, 0 };
	s64 pos = 0;
	int res = 0;

	ni = open_ino(h, dir, &res);
	if (!ni)
		return res;
	if (!is_ntfs_dir(ni)) {
		res = -ENOTDIR;
	} else {
		errno = 0;
		if (ntfs_readdir(ni, &pos, &fill, (ntfs_filldir_t)dir_filler))
			res = fill.err ? fill.err : err_or(EIO);
		else if (fill.err)
			res = fill.err;
		touch_atime(h, ni);
	}
	close_ino(ni, &res);
	return res;
}

int strata_ntfs_read(struct strata_ntfs *h, uint64_t ino, uint64_t offset, void *buf,
		size_t len, size_t *got)
{
	ntfs_inode *ni;
	ntfs_attr *na;
	s64 size, want, total = 0, r;
	int res = 0;

	*got = 0;
	if (offset > INT64_MAX)
		return -EINVAL;
	ni = open_ino(h, ino, &res);
	if (!ni)
		return res;
	if (is_ntfs_dir(ni) && !(ni->flags & FILE_ATTR_REPARSE_POINT)) {
		res = -EISDIR;
		goto out;
	}
	errno = 0;
	na = ntfs_attr_open(ni, AT_DATA, AT_UNNAMED, 0);
	if (!na) {
		res = err_or(EIO);
		if (res == -ENOENT)
			res = 0; /* no data attribute: an empty file (a junction, say) */
		goto out;
	}
	size = na->data_size;
	if ((s64)offset < size) {
		want = size - (s64)offset;
		if ((uint64_t)want > len)
			want = (s64)len;
		while (total < want) {
			errno = 0;
			r = ntfs_attr_pread(na, (s64)offset + total, want - total, (u8 *)buf + total);
			if (r <= 0 || r > want - total) {
				res = r < 0 ? err_or(EIO) : -EIO;
				break;
			}
			total += r;
		}
	}
	ntfs_attr_close(na);
	*got = (size_t)total;
	if (!res)
		touch_atime(h, ni);
out:
	close_ino(ni, &res);
	return res;
}

/* Writes `len` bytes; *done says how many went in, also on failure (ENOSPC). */
int strata_ntfs_write(struct strata_ntfs *h, uint64_t ino, uint64_t offset, const void *buf,
		size_t len, size_t *done)
{
	ntfs_inode *ni;
	ntfs_attr *na;
	s64 total = 0, r;
	int res = 0;

	*done = 0;
	if (offset > INT64_MAX || len > INT64_MAX || (s64)offset > INT64_MAX - (s64)len)
		return -EFBIG;
	ni = open_ino(h, ino, &res);
	if (!ni)
		return res;
	if (is_ntfs_dir(ni)) {
		res = -EISDIR;
		goto out;
	}
	if (ni->mft_no < FILE_first_user) {
		res = -EPERM;
		goto out;
	}
	if (ni->flags & FILE_ATTR_REPARSE_POINT) {
		res = -EOPNOTSUPP;
		goto out;
	}
	errno = 0;
	na = ntfs_attr_open(ni, AT_DATA, AT_UNNAMED, 0);
	if (!na) {
		res = err_or(EIO);
		goto out;
	}
	while (total < (s64)len) {
		errno = 0;
		r = ntfs_attr_pwrite(na, (s64)offset + total, (s64)len - total,
				(const u8 *)buf + total);
		if (r <= 0) {
			res = err_or(EIO);
			break;
		}
		total += r;
	}
	ntfs_attr_close(na);
	*done = (size_t)total;
	if (total > 0) {
		ntfs_inode_update_times(ni, NTFS_UPDATE_MCTIME);
		set_archive(ni);
	}
out:
	close_ino(ni, &res);
	return res;
}

int strata_ntfs_truncate(struct strata_ntfs *h, uint64_t ino, uint64_t size)
{
	ntfs_inode *ni;
	ntfs_attr *na;
	s64 oldsize;
	int res = 0;
	char zero = 0;

	if (size > INT64_MAX)
		return -EFBIG;
	ni = open_ino(h, ino, &res);
	if (!ni)
		return res;
	if (is_ntfs_dir(ni)) {
		res = -EISDIR;
		goto out;
	}
	if (ni->mft_no < FILE_first_user) {
		res = -EPERM;
		goto out;
	}
	if (ni->flags & FILE_ATTR_REPARSE_POINT) {
		res = -EOPNOTSUPP;
		goto out;
	}
	errno = 0;
	na = ntfs_attr_open(ni, AT_DATA, AT_UNNAMED, 0);
	if (!na) {
		res = err_or(EIO);
		goto out;
	}
	oldsize = na->data_size;
	errno = 0;
	/* compressed files grow by a final zero, which makes a hole where it can (ntfs-3g) */
	if ((na->data_flags & ATTR_COMPRESSION_MASK) && (s64)size > na->initialized_size) {
		if (ntfs_attr_pwrite(na, (s64)size - 1, 1, &zero) <= 0)
			res = err_or(EIO);
	} else if (ntfs_attr_truncate(na, (s64)size)) {
		res = err_or(EIO);
	}
	ntfs_attr_close(na);
	if (!res) {
		if (oldsize != (s64)size)
			set_archive(ni);
		ntfs_inode_update_times(ni, NTFS_UPDATE_MCTIME);
	}
out:
	close_ino(ni, &res);
	return res;
}

/* kind: 0 regular file, 1 directory, 2 symlink to `target`. */
int strata_ntfs_create(struct strata_ntfs *h, uint64_t dir, const char *name, int kind,
		const char *target, uint64_t *ino)
{
	ntfs_inode *dir_ni = NULL, *ni;
	ntfschar *uname = NULL, *utarget = NULL;
	int ulen, tlen = 0, res;
	uint64_t existing;

	res = to_uname(name, &uname, &ulen);
	if (res)
		return res;
	if (kind == 2) {
		errno = 0;
		tlen = ntfs_mbstoucs(target, &utarget);
		if (tlen < 0) {
			res = err_or(EILSEQ);
			goto out;
		}
		if (tlen == 0) {
			res = -ENOENT;
			goto out;
		}
		if (tlen > PATH_MAX) {
			res = -ENAMETOOLONG;
			goto out;
		}
	}
	dir_ni = open_ino(h, dir, &res);
	if (!dir_ni)
		goto out;
	if (!is_ntfs_dir(dir_ni)) {
		res = -ENOTDIR;
		goto out;
	}
	if (dir_ni->mft_no == FILE_Extend) {
		res = -EPERM;
		goto out;
	}
	if (dir_ni->flags & FILE_ATTR_REPARSE_POINT) {
		res = -EOPNOTSUPP;
		goto out;
	}
	res = lookup_in(dir_ni, uname, ulen, &existing);
	if (!res) {
		res = -EEXIST;
		goto out;
	}
	if (res != -ENOENT)
		goto out;
	res = 0;
	errno = 0;
	if (kind == 2)
		ni = ntfs_create_symlink(dir_ni, const_cpu_to_le32(0), uname, ulen, utarget, tlen);
	else
		ni = ntfs_create(dir_ni, const_cpu_to_le32(0), uname, ulen,
				kind == 1 ? S_IFDIR : S_IFREG);
	if (!ni) {
		res = err_or(EIO);
		goto out;
	}
	*ino = ni->mft_no;
	set_archive(ni);
	NInoSetDirty(ni);
	/* closing ni updates its name in dir_ni's index: give it the open dir_ni */
	errno = 0;
	if (ntfs_inode_close_in_dir(ni, dir_ni))
		res = err_or(EIO);
	ntfs_inode_update_times(dir_ni, NTFS_UPDATE_MCTIME);
out:
	close_ino(dir_ni, &res);
	free(uname);
	free(utarget);
	return res;
}

/* A new name `name` in `dir` for `ino`; directories only when allow_dir (rename). */
int strata_ntfs_link(struct strata_ntfs *h, uint64_t ino, uint64_t dir, const char *name,
		int allow_dir)
{
	ntfs_inode *ni = NULL, *dir_ni = NULL;
	ntfschar *uname = NULL;
	int ulen, res;
	uint64_t existing;

	res = to_uname(name, &uname, &ulen);
	if (res)
		return res;
	if (ino == dir) {
		res = -EINVAL;
		goto out;
	}
	ni = open_ino(h, ino, &res);
	if (!ni)
		goto out;
	if (is_ntfs_dir(ni) && !allow_dir) {
		res = -EPERM;
		goto out;
	}
	if (ni->mft_no < FILE_first_user) {
		res = -EPERM;
		goto out;
	}
	if (le16_to_cpu(ni->mrec->link_count) >= 0xffff) {
		res = -EMLINK;
		goto out;
	}
	dir_ni = open_ino(h, dir, &res);
	if (!dir_ni)
		goto out;
	if (!is_ntfs_dir(dir_ni)) {
		res = -ENOTDIR;
		goto out;
	}
	if (dir_ni->mft_no == FILE_Extend) {
		res = -EPERM;
		goto out;
	}
	if (dir_ni->flags & FILE_ATTR_REPARSE_POINT) {
		res = -EOPNOTSUPP;
		goto out;
	}
	res = lookup_in(dir_ni, uname, ulen, &existing);
	if (!res) {
		res = -EEXIST;
		goto out;
	}
	if (res != -ENOENT)
		goto out;
	res = 0;
	errno = 0;
	if (ntfs_link(ni, dir_ni, uname, (u8)ulen)) {
		res = err_or(EIO);
		goto out;
	}
	set_archive(ni);
	ntfs_inode_update_times(ni, NTFS_UPDATE_CTIME);
	ntfs_inode_update_times(dir_ni, NTFS_UPDATE_MCTIME);
out:
	/* the directory first: closing ni syncs its name into dir_ni's index */
	close_ino(dir_ni, &res);
	close_ino(ni, &res);
	free(uname);
	return res;
}

/* Removes `name` from `dir`. want: 0 anything, 1 a non-directory (unlink), 2 a directory
 * (rmdir). */
int strata_ntfs_remove(struct strata_ntfs *h, uint64_t dir, const char *name, int want)
{
	ntfs_inode *ni = NULL, *dir_ni = NULL;
	ntfschar *uname = NULL;
	int ulen, res;
	uint64_t ino;

	res = to_uname(name, &uname, &ulen);
	if (res)
		return res;
	if (dir == FILE_Extend) {
		res = -EPERM;
		goto out;
	}
	dir_ni = open_ino(h, dir, &res);
	if (!dir_ni)
		goto out;
	if (!is_ntfs_dir(dir_ni)) {
		res = -ENOTDIR;
		goto out;
	}
	res = lookup_in(dir_ni, uname, ulen, &ino);
	if (res)
		goto out;
	if (ino < FILE_first_user) {
		res = -EPERM;
		goto out;
	}
	if (ino == dir) {
		res = -EINVAL;
		goto out;
	}
	ni = open_ino(h, ino, &res);
	if (!ni)
		goto out;
	if (want == 1 && is_posix_dir(ni)) {
		res = -EISDIR;
		goto out;
	}
	if (want == 2 && !is_posix_dir(ni)) {
		res = -ENOTDIR;
		goto out;
	}
	if (dir_ni->flags & FILE_ATTR_REPARSE_POINT) {
		res = -EOPNOTSUPP;
		goto out;
	}
	errno = 0;
	/* closes both, directory first */
	if (ntfs_delete(h->vol, NULL, ni, dir_ni, uname, (u8)ulen))
		res = err_or(EIO);
	ni = dir_ni = NULL;
out:
	close_ino(ni, &res);
	close_ino(dir_ni, &res);
	free(uname);
	return res;
}

/* 1 when the directory is empty, 0 when not, or -errno. */
int strata_ntfs_dir_is_empty(struct strata_ntfs *h, uint64_t ino)
{
	ntfs_inode *ni;
	int res = 0, r;

	ni = open_ino(h, ino, &res);
	if (!ni)
		return res;
	errno = 0;
	r = ntfs_check_empty_dir(ni);
	if (r == 0)
		res = 1;
	else if (errno != ENOTEMPTY)
		res = err_or(EIO);
	close_ino(ni, &res);
	return res;
}

/* The target of a symlink (Interix, or a junction/symlink reparse point), malloc'd. */
int strata_ntfs_readlink(struct strata_ntfs *h, uint64_t ino, char **out, size_t *outlen)
{
	ntfs_inode *ni;
	ntfs_attr *na = NULL;
	INTX_FILE *intx = NULL;
	char *target = NULL;
	int res = 0, len;

	*out = NULL;
	*outlen = 0;
	ni = open_ino(h, ino, &res);
	if (!ni)
		return res;
	if (ni->flags & FILE_ATTR_REPARSE_POINT) {
		le32 tag = reparse_tag(ni);
		struct strata_ntfs_stat st;

		memset(&st, 0, sizeof(st));
		stat_reparse(ni, &st);
		if ((st.mode & S_IFMT) != S_IFLNK) {
			res = -EINVAL;
			goto out;
		}
		errno = 0;
		if (tag == IO_REPARSE_TAG_MOUNT_POINT || tag == IO_REPARSE_TAG_SYMLINK ||
		    tag == IO_REPARSE_TAG_LX_SYMLINK)
			target = ntfs_make_symlink(ni, mount_point);
		if (!target) {
			target = malloc(BAD_REPARSE_LEN + 1);
			if (!target) {
				res = -ENOMEM;
				goto out;
			}
			snprintf(target, BAD_REPARSE_LEN + 1, bad_reparse_fmt,
					(unsigned long)le32_to_cpu(tag));
		}
		*outlen = strlen(target);
		*out = target;
		goto out;
	}
	if (!(ni->flags & FILE_ATTR_SYSTEM) || is_ntfs_dir(ni)) {
		res = -EINVAL;
		goto out;
	}
	errno = 0;
	na = ntfs_attr_open(ni, AT_DATA, AT_UNNAMED, 0);
	if (!na) {
		res = err_or(EIO);
		goto out;
	}
	if (na->data_size <= (s64)sizeof(INTX_FILE_TYPES)) {
		res = -EINVAL;
		goto out;
	}
	if (na->data_size > (s64)(sizeof(INTX_FILE_TYPES) + sizeof(ntfschar) * PATH_MAX)) {
		res = -ENAMETOOLONG;
		goto out;
	}
	intx = malloc((size_t)na->data_size);
	if (!intx) {
		res = -ENOMEM;
		goto out;
	}
	errno = 0;
	if (ntfs_attr_pread(na, 0, na->data_size, intx) != na->data_size) {
		res = err_or(EIO);
		goto out;
	}
	if (intx->magic != INTX_SYMBOLIC_LINK) {
		res = -EINVAL;
		goto out;
	}
	errno = 0;
	len = ntfs_ucstombs(intx_target(intx),
			(na->data_size - offsetof(INTX_FILE, target)) / sizeof(ntfschar), &target, 0);
	if (len < 0) {
		res = err_or(EILSEQ);
		goto out;
	}
	*out = target;
	*outlen = (size_t)len;
out:
	free(intx);
	if (na)
		ntfs_attr_close(na);
	close_ino(ni, &res);
	return res;
}

/* utimens with explicit times (raw NTFS times); ctime becomes now. */
int strata_ntfs_set_times(struct strata_ntfs *h, uint64_t ino, int set_atime, int64_t atime,
		int set_mtime, int64_t mtime)
{
	ntfs_inode *ni;
	int res = 0;

	/* ntfs-3g's utimens on a metafile changes nothing that reaches the disk */
	if (ino < FILE_first_user && ino != FILE_root)
		return ino <= 1 ? -ENOENT : 0;
	ni = open_ino(h, ino, &res);
	if (!ni)
		return res;
	if (set_atime)
		ni->last_access_time = cpu_to_sle64(atime);
	if (set_mtime)
		ni->last_data_change_time = cpu_to_sle64(mtime);
	ntfs_inode_update_times(ni, NTFS_UPDATE_CTIME);
	close_ino(ni, &res);
	return res;
}
