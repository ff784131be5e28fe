/*
 * The C side of strata's ext2/3/4 adapter (src/fs/ext4.rs): an I/O manager that sends
 * libext2fs's block I/O back into Rust (where the device and the block cache live), and
 * one small function per filesystem operation, written against libext2fs 1.47.
 *
 * What this file owns: every access to libext2fs structures (superblock fields, inodes,
 * directory entries), so that Rust never needs their layout. What it must not do: policy.
 * Name checks, POSIX error rules (EISDIR, ENOTEMPTY, EXDEV-like loops), free-space margins
 * and the order of the steps of a rename are decided in Rust; each function here does one
 * step and returns a libext2fs errcode_t (or an errno, which libext2fs also uses).
 *
 * The write paths follow the logic of fuse2fs (e2fsprogs misc/fuse2fs.c): the new inode
 * is linked into its directory before it is written, so that a full directory fails before
 * anything is allocated; a removed inode loses its blocks with ext2fs_punch and its bitmap
 * bit with ext2fs_inode_alloc_stats2, and gets a dtime. Large writes to extent-mapped
 * files leave fuse2fs's way for their whole blocks (write_blocks): allocated at once as
 * unwritten extents, written to the device run by run, then marked written.
 */
#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <ext2fs/ext2_fs.h>
#include <ext2fs/ext2fs.h>
#include <et/com_err.h>

/* ---- The device, as Rust hands it over ------------------------------------------------ */

/* Implemented in Rust (src/fs/ext4.rs, `DevOps`); each returns 0 or an errno. Function
 * pointers rather than exported symbols, so that linking needs nothing from the rlib. */
struct strata_ext4_dev {
	void *ctx;
	long (*read)(void *ctx, uint64_t offset, void *buf, uint64_t len);
	long (*write)(void *ctx, uint64_t offset, const void *buf, uint64_t len);
	long (*flush)(void *ctx);
	long (*discard)(void *ctx, uint64_t offset, uint64_t len);
};

/* ---- The I/O manager ------------------------------------------------------------------ */

#define STRATA_DEV_PREFIX "strata-device:"

struct sio_private {
	struct strata_ext4_dev *dev;
	int rw;
};

static struct struct_io_manager strata_io_manager;

static errcode_t sio_open(const char *name, int flags, io_channel *channel)
{
	size_t plen = strlen(STRATA_DEV_PREFIX);
	uintptr_t handle = 0;
	int used = 0;
	io_channel io;
	struct sio_private *priv;

	/* The name is the only way ext2fs_open2 passes anything to us: it carries the Rust
	 * handle as hex, and nothing else is accepted. */
	if (!name || strncmp(name, STRATA_DEV_PREFIX, plen) != 0)
		return EXT2_ET_BAD_DEVICE_NAME;
	if (sscanf(name + plen, "%" SCNxPTR "%n", &handle, &used) != 1 ||
	    name[plen + used] != '\0' || handle == 0)
		return EXT2_ET_BAD_DEVICE_NAME;

	io = calloc(1, sizeof(*io));
	priv = calloc(1, sizeof(*priv));
	if (!io || !priv) {
		free(io);
		free(priv);
		return EXT2_ET_NO_MEMORY;
	}
	io->name = strdup(name);
	if (!io->name) {
		free(io);
		free(priv);
		return EXT2_ET_NO_MEMORY;
	}
	priv->dev = (struct strata_ext4_dev *)handle;
	priv->rw = (flags & IO_FLAG_RW) != 0;
	io->magic = EXT2_ET_MAGIC_IO_CHANNEL;
	io->manager = &strata_io_manager;
	io->block_size = 1024;
	io->refcount = 1;
	io->private_data = priv;
	*channel = io;
	return 0;
}

static errcode_t sio_close(io_channel io)
{
	if (--io->refcount > 0)
		return 0;
	/* No write-back here: a filesystem that is freed without ext2fs_close abandons what
	 * it did not flush (GuestFs::drop); ext2fs_close flushes before it closes. */
	free(io->private_data);
	free(io->name);
	free(io);
	return 0;
}

static errcode_t sio_set_blksize(io_channel io, int blksize)
{
	if (blksize <= 0 || blksize > (1 << 20))
		return EXT2_ET_INVALID_ARGUMENT;
	/* The cache on the Rust side is addressed in bytes, so nothing to drop. */
	io->block_size = blksize;
	return 0;
}

/* Byte range of a block request; a negative count is a byte count (as in unix_io.c). */
static errcode_t sio_range(io_channel io, unsigned long long block, int count,
			   uint64_t *offset, uint64_t *len)
{
	uint64_t bs = (uint64_t)io->block_size;

	if (count < 0)
		*len = (uint64_t)(-(int64_t)count);
	else
		*len = (uint64_t)count * bs;
	if (bs != 0 && block > UINT64_MAX / bs)
		return EXT2_ET_LLSEEK_FAILED;
	*offset = block * bs;
	if (*offset > UINT64_MAX - *len)
		return EXT2_ET_LLSEEK_FAILED;
	return 0;
}

static errcode_t sio_read_blk64(io_channel io, unsigned long long block, int count, void *data)
{
	struct sio_private *priv = io->private_data;
	uint64_t offset, len;
	errcode_t err = sio_range(io, block, count, &offset, &len);

	if (err)
		return err;
	if (len == 0)
		return 0;
	return priv->dev->read(priv->dev->ctx, offset, data, len);
}

static errcode_t sio_read_blk(io_channel io, unsigned long block, int count, void *data)
{
	return sio_read_blk64(io, block, count, data);
}

static errcode_t sio_write_blk64(io_channel io, unsigned long long block, int count,
				 const void *data)
{
	struct sio_private *priv = io->private_data;
	uint64_t offset, len;
	errcode_t err;

	if (!priv->rw)
		return EXT2_ET_RO_FILSYS;
	err = sio_range(io, block, count, &offset, &len);
	if (err)
		return err;
	if (len == 0)
		return 0;
	return priv->dev->write(priv->dev->ctx, offset, data, len);
}

static errcode_t sio_write_blk(io_channel io, unsigned long block, int count, const void *data)
{
	return sio_write_blk64(io, block, count, data);
}

static errcode_t sio_write_byte(io_channel io, unsigned long offset, int size, const void *data)
{
	struct sio_private *priv = io->private_data;

	if (!priv->rw)
		return EXT2_ET_RO_FILSYS;
	if (size < 0)
		return EXT2_ET_INVALID_ARGUMENT;
	if (size == 0)
		return 0;
	return priv->dev->write(priv->dev->ctx, offset, data, (uint64_t)size);
}

static errcode_t sio_flush(io_channel io)
{
	struct sio_private *priv = io->private_data;

	if (!priv->rw)
		return 0;
	return priv->dev->flush(priv->dev->ctx);
}

static errcode_t sio_discard(io_channel io, unsigned long long block, unsigned long long count)
{
	struct sio_private *priv = io->private_data;
	uint64_t bs = (uint64_t)io->block_size;

	if (!priv->rw)
		return EXT2_ET_RO_FILSYS;
	if ((bs && block > UINT64_MAX / bs) || (bs && count > UINT64_MAX / bs) ||
	    block * bs > UINT64_MAX - count * bs)
		return EXT2_ET_LLSEEK_FAILED;
	/* Discarded ranges of a BlockDevice read as zeros, so this serves zeroout as well. */
	return priv->dev->discard(priv->dev->ctx, block * bs, count * bs);
}

static struct struct_io_manager strata_io_manager = {
	.magic = EXT2_ET_MAGIC_IO_MANAGER,
	.name = "strata I/O manager",
	.open = sio_open,
	.close = sio_close,
	.set_blksize = sio_set_blksize,
	.read_blk = sio_read_blk,
	.write_blk = sio_write_blk,
	.flush = sio_flush,
	.write_byte = sio_write_byte,
	.read_blk64 = sio_read_blk64,
	.write_blk64 = sio_write_blk64,
	.discard = sio_discard,
	.zeroout = sio_discard,
};

/* ---- Errors --------------------------------------------------------------------------- */

/* The errno the kernel gives for the same condition (EFSBADCRC is EBADMSG, EFSCORRUPTED
 * is EUCLEAN in ext4). */
int strata_ext4_errno(long code)
{
	if (code > 0 && code < 4096)
		return (int)code;
	switch (code) {
	case EXT2_ET_NO_MEMORY:
		return ENOMEM;
	case EXT2_ET_INVALID_ARGUMENT:
	case EXT2_ET_LLSEEK_FAILED:
		return EINVAL;
	case EXT2_ET_NO_DIRECTORY:
		return ENOTDIR;
	case EXT2_ET_FILE_NOT_FOUND:
		return ENOENT;
	case EXT2_ET_DIR_NO_SPACE:
	case EXT2_ET_TOOSMALL:
	case EXT2_ET_BLOCK_ALLOC_FAIL:
	case EXT2_ET_INODE_ALLOC_FAIL:
	case EXT2_ET_EA_NO_SPACE:
		return ENOSPC;
	case EXT2_ET_FILE_TOO_BIG:
		return EFBIG;
	case EXT2_ET_FILE_EXISTS:
	case EXT2_ET_DIR_EXISTS:
		return EEXIST;
	case EXT2_ET_RO_FILSYS:
	case EXT2_ET_FILE_RO:
		return EROFS;
	case EXT2_ET_BAD_INODE_NUM:
		return ESTALE;
	case EXT2_ET_UNIMPLEMENTED:
	case EXT2_ET_OP_NOT_SUPPORTED:
	case EXT2_ET_UNSUPP_FEATURE:
	case EXT2_ET_RO_UNSUPP_FEATURE:
		return EOPNOTSUPP;
	case EXT2_ET_INODE_CSUM_INVALID:
	case EXT2_ET_DIR_CSUM_INVALID:
	case EXT2_ET_EXTENT_CSUM_INVALID:
	case EXT2_ET_BLOCK_BITMAP_CSUM_INVALID:
	case EXT2_ET_INODE_BITMAP_CSUM_INVALID:
	case EXT2_ET_EXT_ATTR_CSUM_INVALID:
	case EXT2_ET_SB_CSUM_INVALID:
	case EXT2_ET_BAD_CRC:
	case EXT2_ET_MMP_CSUM_INVALID:
		return EBADMSG;
	case EXT2_ET_DIR_CORRUPTED:
	case EXT2_ET_DIR_NO_SPACE_FOR_CSUM:
	case EXT2_ET_EXTENT_HEADER_BAD:
	case EXT2_ET_EXTENT_INDEX_BAD:
	case EXT2_ET_EXTENT_LEAF_BAD:
	case EXT2_ET_EXTENT_CYCLE:
	case EXT2_ET_EXTENT_INVALID_LENGTH:
	case EXT2_ET_BAD_BLOCK_NUM:
	case EXT2_ET_BAD_IND_BLOCK:
	case EXT2_ET_BAD_DIND_BLOCK:
	case EXT2_ET_BAD_TIND_BLOCK:
	case EXT2_ET_CORRUPT_SUPERBLOCK:
	case EXT2_ET_BAD_MAGIC:
	case EXT2_ET_INODE_CORRUPTED:
	case EXT2_ET_INODE_IS_GARBAGE:
	case EXT2_ET_FILESYSTEM_CORRUPTED:
	case EXT2_ET_GDESC_BAD_BLOCK_MAP:
	case EXT2_ET_GDESC_BAD_INODE_MAP:
	case EXT2_ET_GDESC_BAD_INODE_TABLE:
	case EXT2_ET_MISSING_INODE_TABLE:
	case EXT2_ET_BAD_EA_HEADER:
	case EXT2_ET_BAD_EA_BLOCK_NUM:
	case EXT2_ET_EA_BAD_NAME_LEN:
	case EXT2_ET_EA_BAD_VALUE_SIZE:
	case EXT2_ET_EA_BAD_VALUE_OFFSET:
	case EXT2_ET_EA_INODE_CORRUPTED:
	case EXT2_ET_BAD_DESC_SIZE:
	case EXT2_ET_UNEXPECTED_BLOCK_SIZE:
	case EXT2_ET_RESIZE_INODE_CORRUPT:
	case EXT2_ET_SYMLINK_LOOP:
		return EUCLEAN;
	default:
		return EIO;
	}
}

static pthread_once_t error_table_once = PTHREAD_ONCE_INIT;

static void load_error_table(void)
{
	initialize_ext2_error_table();
}

const char *strata_ext4_message(long code)
{
	/* Several filesystems may be open in as many threads. */
	pthread_once(&error_table_once, load_error_table);
	return error_message(code);
}

/* ---- Opening, the superblock, syncing ------------------------------------------------- */

long strata_ext4_open(struct strata_ext4_dev *dev, int rw, ext2_filsys *out)
{
	char name[64];
	int flags = EXT2_FLAG_64BITS;
	errcode_t err;
	ext2_filsys fs = NULL;

	*out = NULL;
	snprintf(name, sizeof(name), STRATA_DEV_PREFIX "%" PRIxPTR, (uintptr_t)dev);
	if (rw)
		flags |= EXT2_FLAG_RW;
	err = ext2fs_open2(name, NULL, flags, 0, 0, &strata_io_manager, &fs);
	if (err)
		return err;
	if (fs->blocksize < 1024 || fs->blocksize > 65536 || fs->group_desc_count == 0) {
		ext2fs_free(fs);
		return EXT2_ET_CORRUPT_SUPERBLOCK;
	}
	if (rw) {
		err = ext2fs_read_bitmaps(fs);
		if (err) {
			ext2fs_free(fs);
			return err;
		}
	}
	*out = fs;
	return 0;
}

/* Superblock facts the Rust side needs, copied out flat. */
struct strata_ext4_super {
	uint32_t blocksize;
	uint32_t cluster_ratio;
	uint64_t first_data_block;
	uint64_t blocks_count;
	uint64_t free_blocks;
	uint64_t r_blocks;
	uint64_t inodes_count;
	uint64_t free_inodes;
	uint64_t groups;
	uint64_t overhead_clusters;
	uint32_t inode_size;
	uint32_t journal_inum;
	uint32_t compat;
	uint32_t incompat;
	uint32_t ro_compat;
	uint32_t state;
	uint32_t last_orphan;
	uint8_t uuid[16];
};

void strata_ext4_super(ext2_filsys fs, struct strata_ext4_super *s)
{
	struct ext2_super_block *sb = fs->super;

	memset(s, 0, sizeof(*s));
	s->blocksize = fs->blocksize;
	s->cluster_ratio = EXT2FS_CLUSTER_RATIO(fs);
	s->first_data_block = sb->s_first_data_block;
	s->blocks_count = ext2fs_blocks_count(sb);
	s->free_blocks = ext2fs_free_blocks_count(sb);
	s->r_blocks = ext2fs_r_blocks_count(sb);
	s->inodes_count = sb->s_inodes_count;
	s->free_inodes = sb->s_free_inodes_count;
	s->groups = fs->group_desc_count;
	s->overhead_clusters = sb->s_overhead_clusters;
	s->inode_size = EXT2_INODE_SIZE(sb);
	s->journal_inum = sb->s_journal_inum;
	s->compat = sb->s_feature_compat;
	s->incompat = sb->s_feature_incompat;
	s->ro_compat = sb->s_feature_ro_compat;
	s->state = sb->s_state;
	s->last_orphan = sb->s_last_orphan;
	memcpy(s->uuid, sb->s_uuid, sizeof(s->uuid));
}

/* Makes the superblock's free counts the sums of the group descriptors' (which the kernel
 * keeps exact; it updates the superblock's copy only now and then). Returns whether they
 * changed. */
int strata_ext4_fix_counts(ext2_filsys fs)
{
	blk64_t free_blocks = 0;
	uint64_t free_inodes = 0;
	dgrp_t g;

	for (g = 0; g < fs->group_desc_count; g++) {
		free_blocks += ext2fs_bg_free_blocks_count(fs, g);
		free_inodes += ext2fs_bg_free_inodes_count(fs, g);
	}
	free_blocks = EXT2FS_C2B(fs, free_blocks);
	if (free_blocks == ext2fs_free_blocks_count(fs->super) &&
	    free_inodes == fs->super->s_free_inodes_count)
		return 0;
	ext2fs_free_blocks_count_set(fs->super, free_blocks);
	fs->super->s_free_inodes_count = (uint32_t)free_inodes;
	ext2fs_mark_super_dirty(fs);
	return 1;
}

/* Blocks that statfs does not count as the filesystem's (bsddf): what the kernel's
 * ext4_calculate_overhead adds up, that is superblocks and descriptor copies, bitmaps,
 * inode tables, and the internal journal. */
long strata_ext4_overhead(ext2_filsys fs, uint64_t *out)
{
	uint64_t overhead = fs->super->s_first_data_block;
	dgrp_t g;
	errcode_t err;

	for (g = 0; g < fs->group_desc_count; g++) {
		blk64_t super_blk, old_desc, new_desc;
		blk_t used = 0;

		err = ext2fs_super_and_bgd_loc2(fs, g, &super_blk, &old_desc, &new_desc, &used);
		if (err)
			return err;
		overhead += used;
		overhead += 2 + fs->inode_blocks_per_group;
	}
	if (ext2fs_has_feature_journal(fs->super) && fs->super->s_journal_inum) {
		struct ext2_inode inode;

		err = ext2fs_read_inode(fs, fs->super->s_journal_inum, &inode);
		if (err)
			return err;
		overhead += EXT2_I_SIZE(&inode) / fs->blocksize;
	}
	*out = overhead;
	return 0;
}

/* Writes back everything: superblock (counts, state, checksums), group descriptors and
 * bitmaps when `metadata` is set, then every cached block. */
long strata_ext4_sync(ext2_filsys fs, int metadata)
{
	errcode_t err;

	if (!(fs->flags & EXT2_FLAG_RW))
		return 0;
	if (metadata) {
		fs->super->s_state |= EXT2_VALID_FS;
		ext2fs_mark_super_dirty(fs);
		err = ext2fs_set_gdt_csum(fs);
		if (err)
			return err;
		/* ext2fs_flush2 ends with an I/O flush (our write-back). */
		return ext2fs_flush2(fs, 0);
	}
	return io_channel_flush(fs->io);
}

/* Frees the in-memory filesystem without writing anything (after a sync, or to abandon). */
void strata_ext4_free(ext2_filsys fs)
{
	/* ext2fs_close2 would flush a dirty filesystem; ext2fs_free never writes. */
	ext2fs_free(fs);
}

/* ---- Inodes --------------------------------------------------------------------------- */

static uint32_t next_generation;

static void get_now(struct timespec *now)
{
	if (clock_gettime(CLOCK_REALTIME, now) != 0) {
		now->tv_sec = time(NULL);
		now->tv_nsec = 0;
	}
}

static errcode_t read_inode(ext2_filsys fs, ext2_ino_t ino, struct ext2_inode_large *inode)
{
	memset(inode, 0, sizeof(*inode));
	return ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)inode, sizeof(*inode));
}

static errcode_t write_inode(ext2_filsys fs, ext2_ino_t ino, struct ext2_inode_large *inode)
{
	return ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)inode, sizeof(*inode));
}

/* Whether an extra field (offset, size) is stored in this inode. */
static int extra_fits(ext2_filsys fs, const struct ext2_inode_large *inode, size_t off,
		      size_t size)
{
	if (EXT2_INODE_SIZE(fs->super) <= EXT2_GOOD_OLD_INODE_SIZE)
		return 0;
	return off + size <= (size_t)EXT2_GOOD_OLD_INODE_SIZE + inode->i_extra_isize &&
	       off + size <= (size_t)EXT2_INODE_SIZE(fs->super);
}

#define FITS(fs, inode, field)                                                           \
	extra_fits((fs), (inode), offsetof(struct ext2_inode_large, field),              \
		   sizeof((inode)->field))

/* Seconds beyond 2038 go into the two epoch bits of the _extra field; the range is that
 * of the kernel (1901 to 2446), or of 32 bits when the inode has no room for extra. */
static void encode_time(ext2_filsys fs, struct ext2_inode_large *inode, __u32 *base,
			__u32 *extra, size_t extra_off, int64_t sec, uint32_t nsec)
{
	int has_extra = extra_fits(fs, inode, extra_off, sizeof(__u32));
	int64_t lo = INT32_MIN;
	int64_t hi = has_extra ? (int64_t)INT32_MAX + ((int64_t)3 << 32) : INT32_MAX;

	if (sec < lo)
		sec = lo;
	if (sec > hi)
		sec = hi;
	if (nsec > 999999999)
		nsec = 999999999;
	*base = (__u32)(int32_t)sec;
	if (has_extra)
		*extra = (__u32)(((sec - (int32_t)sec) >> 32) & EXT4_EPOCH_MASK) |
			 (nsec << EXT4_EPOCH_BITS);
}

static void decode_time(ext2_filsys fs, const struct ext2_inode_large *inode, __u32 base,
			__u32 extra, size_t extra_off, int64_t *sec, uint32_t *nsec)
{
	*sec = (int32_t)base;
	*nsec = 0;
	if (extra_fits(fs, inode, extra_off, sizeof(__u32))) {
		*sec += (int64_t)(extra & EXT4_EPOCH_MASK) << 32;
		*nsec = extra >> EXT4_EPOCH_BITS;
	}
}

#define SET_TIME(fs, inode, f, sec, nsec)                                                \
	encode_time((fs), (inode), &(inode)->f, &(inode)->f##_extra,                     \
		    offsetof(struct ext2_inode_large, f##_extra), (sec), (nsec))
#define GET_TIME(fs, inode, f, sec, nsec)                                                \
	decode_time((fs), (inode), (inode)->f, (inode)->f##_extra,                       \
		    offsetof(struct ext2_inode_large, f##_extra), (sec), (nsec))

static void bump_version(ext2_filsys fs, struct ext2_inode_large *inode)
{
	uint64_t v = inode->osd1.linux1.l_i_version;

	if (FITS(fs, inode, i_version_hi))
		v |= (uint64_t)inode->i_version_hi << 32;
	v++;
	inode->osd1.linux1.l_i_version = (__u32)v;
	if (FITS(fs, inode, i_version_hi))
		inode->i_version_hi = (__u32)(v >> 32);
}

#define TOUCH_CTIME 1
#define TOUCH_MTIME 2
#define TOUCH_ATIME 4
#define TOUCH_CRTIME 8

static void touch(ext2_filsys fs, struct ext2_inode_large *inode, int what)
{
	struct timespec now;

	get_now(&now);
	if (what & TOUCH_CTIME)
		SET_TIME(fs, inode, i_ctime, now.tv_sec, (uint32_t)now.tv_nsec);
	if (what & TOUCH_MTIME)
		SET_TIME(fs, inode, i_mtime, now.tv_sec, (uint32_t)now.tv_nsec);
	if (what & TOUCH_ATIME)
		SET_TIME(fs, inode, i_atime, now.tv_sec, (uint32_t)now.tv_nsec);
	if ((what & TOUCH_CRTIME) && FITS(fs, inode, i_crtime)) {
		SET_TIME(fs, inode, i_crtime, now.tv_sec, (uint32_t)now.tv_nsec);
	}
	bump_version(fs, inode);
}

static errcode_t touch_ino(ext2_filsys fs, ext2_ino_t ino, int what)
{
	struct ext2_inode_large inode;
	errcode_t err = read_inode(fs, ino, &inode);

	if (err)
		return err;
	touch(fs, &inode, what);
	return write_inode(fs, ino, &inode);
}

struct strata_ext4_stat {
	uint32_t mode;
	uint32_t uid;
	uint32_t gid;
	uint32_t links;
	uint32_t flags;
	uint32_t dtime;
	uint64_t size;
	uint64_t blocks; /* 512-byte units */
	int64_t atime;
	int64_t mtime;
	int64_t ctime;
	uint32_t atime_ns;
	uint32_t mtime_ns;
	uint32_t ctime_ns;
	uint32_t rdev_old; /* i_block[0]: old 8:8 device number */
	uint32_t rdev_new; /* i_block[1]: new 12:20 device number */
};

long strata_ext4_stat(ext2_filsys fs, ext2_ino_t ino, struct strata_ext4_stat *st)
{
	struct ext2_inode_large inode;
	errcode_t err = read_inode(fs, ino, &inode);

	memset(st, 0, sizeof(*st));
	if (err)
		return err;
	st->mode = inode.i_mode;
	st->uid = inode_uid(inode);
	st->gid = inode_gid(inode);
	st->links = inode.i_links_count;
	st->flags = inode.i_flags;
	st->dtime = inode.i_dtime;
	st->size = EXT2_I_SIZE(&inode);
	st->blocks = ext2fs_get_stat_i_blocks(fs, (struct ext2_inode *)&inode);
	GET_TIME(fs, &inode, i_atime, &st->atime, &st->atime_ns);
	GET_TIME(fs, &inode, i_mtime, &st->mtime, &st->mtime_ns);
	GET_TIME(fs, &inode, i_ctime, &st->ctime, &st->ctime_ns);
	if (LINUX_S_ISCHR(inode.i_mode) || LINUX_S_ISBLK(inode.i_mode)) {
		st->rdev_old = inode.i_block[0];
		st->rdev_new = inode.i_block[1];
	}
	return 0;
}

struct strata_ext4_setattr {
	uint32_t set_mode;
	uint32_t mode; /* the whole i_mode, type bits included */
	uint32_t set_uid;
	uint32_t uid;
	uint32_t set_gid;
	uint32_t gid;
	uint32_t set_atime;
	uint32_t atime_ns;
	int64_t atime;
	uint32_t set_mtime;
	uint32_t mtime_ns;
	int64_t mtime;
};

long strata_ext4_setattr(ext2_filsys fs, ext2_ino_t ino, const struct strata_ext4_setattr *a)
{
	struct ext2_inode_large inode;
	errcode_t err = read_inode(fs, ino, &inode);

	if (err)
		return err;
	if (a->set_mode)
		inode.i_mode = (__u16)a->mode;
	if (a->set_uid) {
		inode.i_uid = (__u16)a->uid;
		ext2fs_set_i_uid_high(inode, a->uid >> 16);
	}
	if (a->set_gid) {
		inode.i_gid = (__u16)a->gid;
		ext2fs_set_i_gid_high(inode, a->gid >> 16);
	}
	if (a->set_atime)
		SET_TIME(fs, &inode, i_atime, a->atime, a->atime_ns);
	if (a->set_mtime)
		SET_TIME(fs, &inode, i_mtime, a->mtime, a->mtime_ns);
	touch(fs, &inode, TOUCH_CTIME);
	return write_inode(fs, ino, &inode);
}

/* Zeroes an inode's slot, for an inode that was written but never became part of the
 * tree (a failed mkdir or symlink): e2fsck then sees an unused inode. */
static void clear_inode(ext2_filsys fs, ext2_ino_t ino)
{
	struct ext2_inode_large inode;

	memset(&inode, 0, sizeof(inode));
	ext2fs_write_new_inode(fs, ino, (struct ext2_inode *)&inode);
	memset(&inode, 0, sizeof(inode));
	ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)&inode, sizeof(inode));
}

/* Drops one link (or, with `all`, every link: a directory's two) from an inode; at zero
 * its blocks, extended attributes and inode are freed and dtime is set, as fuse2fs's
 * remove_inode does. */
static errcode_t drop_links(ext2_filsys fs, ext2_ino_t ino, int all)
{
	struct ext2_inode_large inode;
	errcode_t err = read_inode(fs, ino, &inode);

	if (err)
		return err;
	if (inode.i_links_count == 0)
		return 0;
	if (all)
		inode.i_links_count = 0;
	else
		inode.i_links_count--;
	touch(fs, &inode, TOUCH_CTIME);
	if (inode.i_links_count == 0) {
		inode.i_dtime = fs->now ? fs->now : (__u32)time(NULL);
		err = ext2fs_free_ext_attr(fs, ino, &inode);
		if (err)
			goto out;
		if (ext2fs_inode_has_valid_blocks2(fs, (struct ext2_inode *)&inode)) {
			err = ext2fs_punch(fs, ino, (struct ext2_inode *)&inode, NULL, 0, ~0ULL);
			if (err)
				goto out;
		}
		if (LINUX_S_ISDIR(inode.i_mode))
			ext2fs_inode_size_set(fs, (struct ext2_inode *)&inode, 0);
		ext2fs_inode_alloc_stats2(fs, ino, -1, LINUX_S_ISDIR(inode.i_mode));
	}
out:
	{
		errcode_t werr = write_inode(fs, ino, &inode);
		return err ? err : werr;
	}
}

/* Adds `delta` (+1 or -1) to a directory's link count for a subdirectory coming or going,
 * keeping dir_nlink's rule: past EXT2_LINK_MAX a count is 1 ("many") and stays 1. Also sets
 * the directory's mtime and ctime. */
static errcode_t dir_nlink_add(ext2_filsys fs, ext2_ino_t dir, int delta)
{
	struct ext2_inode_large inode;
	errcode_t err = read_inode(fs, dir, &inode);

	if (err)
		return err;
	if (delta > 0) {
		if (inode.i_links_count == 1 || inode.i_links_count >= EXT2_LINK_MAX)
			inode.i_links_count = 1;
		else
			inode.i_links_count++;
	} else if (delta < 0 && inode.i_links_count > 2) {
		inode.i_links_count--;
	}
	touch(fs, &inode, TOUCH_CTIME | TOUCH_MTIME);
	return write_inode(fs, dir, &inode);
}

/* ---- Directories ---------------------------------------------------------------------- */

static int file_type(unsigned int mode)
{
	if (LINUX_S_ISREG(mode))
		return EXT2_FT_REG_FILE;
	if (LINUX_S_ISDIR(mode))
		return EXT2_FT_DIR;
	if (LINUX_S_ISCHR(mode))
		return EXT2_FT_CHRDEV;
	if (LINUX_S_ISBLK(mode))
		return EXT2_FT_BLKDEV;
	if (LINUX_S_ISLNK(mode))
		return EXT2_FT_SYMLINK;
	if (LINUX_S_ISFIFO(mode))
		return EXT2_FT_FIFO;
	if (LINUX_S_ISSOCK(mode))
		return EXT2_FT_SOCK;
	return 0;
}

/*
 * Turns a full one-block directory into an htree, as the kernel's make_indexed_dir does
 * when such a directory grows (libext2fs maintains an index but never starts one): block 0
 * becomes the index root, with one entry pointing at a new block 1 that takes every entry
 * but '.' and '..'. Adding the next name then goes through ext2fs_link's dx_link, which
 * splits that leaf by hash. EXT2_ET_DIR_NO_SPACE means "not converted, expand instead".
 */
static errcode_t make_indexed(ext2_filsys fs, ext2_ino_t dir)
{
	struct ext2_inode inode;
	unsigned int bs = fs->blocksize;
	int csum = ext2fs_has_feature_metadata_csum(fs->super);
	unsigned int dirent_tail = csum ? sizeof(struct ext2_dir_entry_tail) : 0;
	unsigned int dx_tail = csum ? sizeof(struct ext2_dx_tail) : 0;
	unsigned int hash = fs->super->s_def_hash_version;
	char *root = NULL, *leaf = NULL;
	blk64_t pblk0 = 0, pblk1 = 0;
	unsigned int off, loff = 0, last = 0, rec_len, n = 0;
	ext2_ino_t parent = 0;
	struct ext2_dir_entry *de;
	struct ext2_dx_root_info *info;
	struct ext2_dx_countlimit *cl;
	struct ext2_dx_entry *entries;
	errcode_t err;

	if (!ext2fs_has_feature_dir_index(fs->super) ||
	    (hash != EXT2_HASH_LEGACY && hash != EXT2_HASH_HALF_MD4 && hash != EXT2_HASH_TEA))
		return EXT2_ET_DIR_NO_SPACE;
	err = ext2fs_read_inode(fs, dir, &inode);
	if (err)
		return err;
	if ((inode.i_flags & (EXT2_INDEX_FL | EXT4_INLINE_DATA_FL)) || EXT2_I_SIZE(&inode) != bs)
		return EXT2_ET_DIR_NO_SPACE;
	err = ext2fs_bmap2(fs, dir, &inode, NULL, 0, 0, NULL, &pblk0);
	if (err)
		return err;
	if (pblk0 == 0)
		return EXT2_ET_DIR_NO_SPACE;
	err = ext2fs_get_memzero(bs, &root);
	if (!err)
		err = ext2fs_get_memzero(bs, &leaf);
	if (err)
		goto out;
	err = ext2fs_read_dir_block4(fs, pblk0, root, 0, dir);
	if (err)
		goto out;

	/* Copy the entries into the leaf, packed; '.' and '..' must come first. */
	for (off = 0; off + 8 <= bs - dirent_tail; off += rec_len) {
		unsigned int nlen;

		de = (struct ext2_dir_entry *)(root + off);
		err = ext2fs_get_rec_len(fs, de, &rec_len);
		if (err)
			goto out;
		nlen = ext2fs_dirent_name_len(de);
		if (rec_len < 8 || (rec_len & 3) || off + rec_len > bs || nlen + 8 > rec_len) {
			err = EXT2_ET_DIR_CORRUPTED;
			goto out;
		}
		if (n == 0 && !(de->inode == dir && nlen == 1 && de->name[0] == '.')) {
			err = EXT2_ET_DIR_NO_SPACE;
			goto out;
		}
		if (n == 1) {
			if (!(de->inode && nlen == 2 && de->name[0] == '.' && de->name[1] == '.')) {
				err = EXT2_ET_DIR_NO_SPACE;
				goto out;
			}
			parent = de->inode;
		}
		if (n++ < 2 || de->inode == 0)
			continue;
		if (loff + EXT2_DIR_REC_LEN(nlen) > bs - dirent_tail) {
			err = EXT2_ET_DIR_CORRUPTED;
			goto out;
		}
		memcpy(leaf + loff, de, 8 + nlen);
		last = loff;
		err = ext2fs_set_rec_len(fs, EXT2_DIR_REC_LEN(nlen), (struct ext2_dir_entry *)(leaf + loff));
		if (err)
			goto out;
		loff += EXT2_DIR_REC_LEN(nlen);
	}
	if (n < 2) {
		err = EXT2_ET_DIR_NO_SPACE;
		goto out;
	}
	if (loff == 0) {
		/* Nothing but '.' and '..' and yet full: leave it alone. */
		err = EXT2_ET_DIR_NO_SPACE;
		goto out;
	}
	err = ext2fs_set_rec_len(fs, bs - dirent_tail - last, (struct ext2_dir_entry *)(leaf + last));
	if (err)
		goto out;
	if (csum)
		ext2fs_initialize_dirent_tail(fs, EXT2_DIRENT_TAIL(leaf, bs));

	/* The root: '.' and '..' as the kernel lays them, the root info, one entry. */
	memset(root, 0, bs);
	de = (struct ext2_dir_entry *)root;
	de->inode = dir;
	ext2fs_dirent_set_name_len(de, 1);
	if (ext2fs_has_feature_filetype(fs->super))
		ext2fs_dirent_set_file_type(de, EXT2_FT_DIR);
	de->name[0] = '.';
	err = ext2fs_set_rec_len(fs, 12, de);
	if (err)
		goto out;
	de = (struct ext2_dir_entry *)(root + 12);
	de->inode = parent;
	ext2fs_dirent_set_name_len(de, 2);
	if (ext2fs_has_feature_filetype(fs->super))
		ext2fs_dirent_set_file_type(de, EXT2_FT_DIR);
	de->name[0] = '.';
	de->name[1] = '.';
	err = ext2fs_set_rec_len(fs, bs - 12, de);
	if (err)
		goto out;
	info = (struct ext2_dx_root_info *)(root + 24);
	info->hash_version = (__u8)hash;
	info->info_length = sizeof(*info);
	cl = (struct ext2_dx_countlimit *)(root + 32);
	cl->limit = ext2fs_cpu_to_le16((bs - 32 - dx_tail) / sizeof(struct ext2_dx_entry));
	cl->count = ext2fs_cpu_to_le16(1);
	entries = (struct ext2_dx_entry *)(root + 32);
	entries[0].block = ext2fs_cpu_to_le32(1);

	/* Block 1 (allocated and counted by expand_dir), then the root, then the flag. */
	err = ext2fs_expand_dir(fs, dir);
	if (err)
		goto out;
	err = ext2fs_read_inode(fs, dir, &inode);
	if (err)
		goto out;
	err = ext2fs_bmap2(fs, dir, &inode, NULL, 0, 1, NULL, &pblk1);
	if (err)
		goto out;
	if (pblk1 == 0) {
		err = EXT2_ET_DIR_CORRUPTED;
		goto out;
	}
	err = ext2fs_write_dir_block4(fs, pblk1, leaf, 0, dir);
	if (err)
		goto out;
	err = ext2fs_write_dir_block4(fs, pblk0, root, 0, dir);
	if (err)
		goto out;
	inode.i_flags |= EXT2_INDEX_FL;
	err = ext2fs_write_inode(fs, dir, &inode);
out:
	ext2fs_free_mem(&root);
	ext2fs_free_mem(&leaf);
	return err;
}

/* Adds an entry. A full one-block directory becomes an htree (as in the kernel), a full
 * linear directory grows by a block, an htree grows inside ext2fs_link (dx_grow_tree).
 * Appending a block an index does not know would corrupt it, so a full htree is ENOSPC,
 * as in the kernel. */
static errcode_t add_entry(ext2_filsys fs, ext2_ino_t dir, const char *name, ext2_ino_t ino,
			   unsigned int mode)
{
	errcode_t err = ext2fs_link(fs, dir, name, ino, file_type(mode));

	if (err == EXT2_ET_DIR_NO_SPACE) {
		struct ext2_inode inode;

		err = ext2fs_read_inode(fs, dir, &inode);
		if (err)
			return err;
		if (inode.i_flags & EXT2_INDEX_FL)
			return EXT2_ET_DIR_NO_SPACE;
		err = make_indexed(fs, dir);
		if (err == EXT2_ET_DIR_NO_SPACE)
			err = ext2fs_expand_dir(fs, dir);
		if (err)
			return err;
		err = ext2fs_link(fs, dir, name, ino, file_type(mode));
	}
	return err;
}

long strata_ext4_lookup(ext2_filsys fs, ext2_ino_t dir, const char *name, int len,
			ext2_ino_t *ino)
{
	*ino = 0;
	return ext2fs_lookup(fs, dir, name, len, NULL, ino);
}

typedef int (*strata_dirent_cb)(void *ctx, uint32_t ino, const char *name, uint32_t len,
				uint32_t file_type);

struct readdir_ctx {
	strata_dirent_cb cb;
	void *ctx;
	int abort;
};

static int readdir_proc(ext2_ino_t dir, int entry, struct ext2_dir_entry *dirent, int offset,
			int blocksize, char *buf, void *priv)
{
	struct readdir_ctx *rc = priv;
	int len = ext2fs_dirent_name_len(dirent);

	(void)dir;
	(void)entry;
	(void)buf;
	if (dirent->inode == 0)
		return 0;
	if ((len == 1 && dirent->name[0] == '.') ||
	    (len == 2 && dirent->name[0] == '.' && dirent->name[1] == '.'))
		return 0;
	/* libext2fs checks rec_len against the block; check the name against both again. */
	if (offset < 0 || len > EXT2_NAME_LEN ||
	    (size_t)offset + 8 + (size_t)len > (size_t)blocksize)
		return 0;
	if (rc->cb(rc->ctx, dirent->inode, dirent->name, (uint32_t)len,
		   (uint32_t)ext2fs_dirent_file_type(dirent))) {
		rc->abort = 1;
		return DIRENT_ABORT;
	}
	return 0;
}

long strata_ext4_readdir(ext2_filsys fs, ext2_ino_t dir, strata_dirent_cb cb, void *ctx)
{
	struct readdir_ctx rc = { cb, ctx, 0 };

	return ext2fs_dir_iterate2(fs, dir, 0, NULL, readdir_proc, &rc);
}

struct empty_ctx {
	int empty;
};

static int empty_proc(ext2_ino_t dir, int entry, struct ext2_dir_entry *dirent, int offset,
		      int blocksize, char *buf, void *priv)
{
	struct empty_ctx *ec = priv;
	int len = ext2fs_dirent_name_len(dirent);

	(void)dir;
	(void)entry;
	(void)offset;
	(void)blocksize;
	(void)buf;
	if (dirent->inode == 0)
		return 0;
	if ((len == 1 && dirent->name[0] == '.') ||
	    (len == 2 && dirent->name[0] == '.' && dirent->name[1] == '.'))
		return 0;
	ec->empty = 0;
	return DIRENT_ABORT;
}

long strata_ext4_dir_is_empty(ext2_filsys fs, ext2_ino_t dir, int *empty)
{
	struct empty_ctx ec = { 1 };
	errcode_t err = ext2fs_dir_iterate2(fs, dir, 0, NULL, empty_proc, &ec);

	*empty = ec.empty;
	return err;
}

struct setent_ctx {
	const char *name;
	int len;
	ext2_ino_t ino;
	int ftype;
	int filetype_feature;
	int done;
};

static int setent_proc(ext2_ino_t dir, int entry, struct ext2_dir_entry *dirent, int offset,
		       int blocksize, char *buf, void *priv)
{
	struct setent_ctx *sc = priv;

	(void)dir;
	(void)entry;
	(void)offset;
	(void)blocksize;
	(void)buf;
	if (dirent->inode == 0 || ext2fs_dirent_name_len(dirent) != sc->len ||
	    memcmp(dirent->name, sc->name, (size_t)sc->len) != 0)
		return 0;
	dirent->inode = sc->ino;
	if (sc->filetype_feature)
		ext2fs_dirent_set_file_type(dirent, sc->ftype);
	sc->done = 1;
	return DIRENT_CHANGED | DIRENT_ABORT;
}

/* Points the existing entry `name` (`..` included) of `dir` at `ino`, in place: what
 * rename does to a target that exists, and to a moved directory's `..`. No space needed;
 * the block's checksum (leaf or htree root) is rewritten by libext2fs. */
static errcode_t set_entry(ext2_filsys fs, ext2_ino_t dir, const char *name, ext2_ino_t ino,
			   unsigned int mode)
{
	struct setent_ctx sc;
	errcode_t err;

	sc.name = name;
	sc.len = (int)strlen(name);
	sc.ino = ino;
	sc.ftype = file_type(mode);
	sc.filetype_feature = ext2fs_has_feature_filetype(fs->super);
	sc.done = 0;
	err = ext2fs_dir_iterate2(fs, dir, 0, NULL, setent_proc, &sc);
	if (err)
		return err;
	return sc.done ? 0 : EXT2_ET_FILE_NOT_FOUND;
}

/* ---- Creating ------------------------------------------------------------------------- */

static pthread_once_t generation_once = PTHREAD_ONCE_INIT;

static void init_generation(void)
{
	uint32_t seed;

	if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
		seed = (uint32_t)time(NULL);
	__atomic_store_n(&next_generation, seed, __ATOMIC_RELAXED);
}

/* i_generation of a new inode (for NFS-style handles): random start, then counting. */
static uint32_t new_generation(void)
{
	pthread_once(&generation_once, init_generation);
	return __atomic_fetch_add(&next_generation, 1, __ATOMIC_RELAXED);
}

static void set_owner(struct ext2_inode_large *inode, uint32_t uid, uint32_t gid)
{
	inode->i_uid = (__u16)uid;
	ext2fs_set_i_uid_high(*inode, uid >> 16);
	inode->i_gid = (__u16)gid;
	ext2fs_set_i_gid_high(*inode, gid >> 16);
}

/* A regular file (or fifo, socket, device node: `mode` carries the type), empty. */
long strata_ext4_create(ext2_filsys fs, ext2_ino_t dir, const char *name, uint32_t mode,
			uint32_t uid, uint32_t gid, uint32_t rdev, ext2_ino_t *out)
{
	struct ext2_inode_large inode;
	ext2_ino_t ino;
	errcode_t err;

	*out = 0;
	err = ext2fs_new_inode(fs, dir, (int)mode, 0, &ino);
	if (err)
		return err;
	err = add_entry(fs, dir, name, ino, mode);
	if (err)
		return err;

	memset(&inode, 0, sizeof(inode));
	inode.i_mode = (__u16)mode;
	inode.i_links_count = 1;
	if (EXT2_INODE_SIZE(fs->super) > EXT2_GOOD_OLD_INODE_SIZE)
		inode.i_extra_isize = sizeof(struct ext2_inode_large) - EXT2_GOOD_OLD_INODE_SIZE;
	set_owner(&inode, uid, gid);
	if (LINUX_S_ISCHR(mode) || LINUX_S_ISBLK(mode)) {
		if (rdev & ~0xFFFFu)
			inode.i_block[1] = rdev;
		else
			inode.i_block[0] = rdev;
	} else if (LINUX_S_ISREG(mode) && ext2fs_has_feature_extents(fs->super)) {
		ext2_extent_handle_t handle;

		/* Writes an empty extent header into i_block and sets EXTENTS_FL. */
		err = ext2fs_extent_open2(fs, ino, (struct ext2_inode *)&inode, &handle);
		if (err)
			goto undo;
		ext2fs_extent_free(handle);
	}
	/* write_new_inode clears the rest of the on-disk slot (in-inode xattr space); the
	 * second write stores the extra fields (nanoseconds, crtime) it does not copy. */
	err = ext2fs_write_new_inode(fs, ino, (struct ext2_inode *)&inode);
	if (err)
		goto undo;
	inode.i_generation = new_generation();
	touch(fs, &inode, TOUCH_ATIME | TOUCH_CTIME | TOUCH_MTIME | TOUCH_CRTIME);
	err = write_inode(fs, ino, &inode);
	if (err)
		goto undo;
	ext2fs_inode_alloc_stats2(fs, ino, +1, 0);
	*out = ino;
	return touch_ino(fs, dir, TOUCH_CTIME | TOUCH_MTIME);
undo:
	ext2fs_unlink(fs, dir, name, ino, 0);
	clear_inode(fs, ino);
	return err;
}

long strata_ext4_mkdir(ext2_filsys fs, ext2_ino_t dir, const char *name, uint32_t mode,
		       uint32_t uid, uint32_t gid, ext2_ino_t *out)
{
	struct ext2_inode_large inode, parent;
	ext2_ino_t ino;
	errcode_t err;
	__u16 parent_links;

	*out = 0;
	err = read_inode(fs, dir, &parent);
	if (err)
		return err;
	parent_links = parent.i_links_count;
	err = ext2fs_new_inode(fs, dir, LINUX_S_IFDIR | (int)(mode & 07777), 0, &ino);
	if (err)
		return err;
	err = add_entry(fs, dir, name, ino, LINUX_S_IFDIR);
	if (err)
		return err;
	/* With the inode number given and no name, ext2fs_mkdir makes the inode and its
	 * block, counts them, and adds the parent's link; it undoes its counts on failure. */
	err = ext2fs_mkdir(fs, dir, ino, NULL);
	if (err) {
		ext2fs_unlink(fs, dir, name, ino, 0);
		clear_inode(fs, ino);
		return err;
	}
	err = read_inode(fs, ino, &inode);
	if (err)
		return err;
	inode.i_mode = (__u16)(LINUX_S_IFDIR | (mode & 07777));
	set_owner(&inode, uid, gid);
	touch(fs, &inode, TOUCH_ATIME | TOUCH_CTIME | TOUCH_MTIME | TOUCH_CRTIME);
	err = write_inode(fs, ino, &inode);
	if (err)
		return err;
	*out = ino;

	/* ext2fs_mkdir counted the parent's new link naively; apply dir_nlink's rule. */
	err = read_inode(fs, dir, &parent);
	if (err)
		return err;
	if (parent_links == 1 || parent_links >= EXT2_LINK_MAX)
		parent.i_links_count = 1;
	touch(fs, &parent, TOUCH_CTIME | TOUCH_MTIME);
	return write_inode(fs, dir, &parent);
}

long strata_ext4_symlink(ext2_filsys fs, ext2_ino_t dir, const char *name, const char *target,
			 uint32_t uid, uint32_t gid, ext2_ino_t *out)
{
	struct ext2_inode_large inode;
	ext2_ino_t ino;
	errcode_t err;

	*out = 0;
	err = ext2fs_new_inode(fs, dir, LINUX_S_IFLNK | 0777, 0, &ino);
	if (err)
		return err;
	err = add_entry(fs, dir, name, ino, LINUX_S_IFLNK);
	if (err)
		return err;
	/* Fast (in the inode) below 60 bytes, else one block; no name: we linked it. */
	err = ext2fs_symlink(fs, dir, ino, NULL, target);
	if (err) {
		ext2fs_unlink(fs, dir, name, ino, 0);
		clear_inode(fs, ino);
		return err;
	}
	err = read_inode(fs, ino, &inode);
	if (err)
		return err;
	set_owner(&inode, uid, gid);
	inode.i_generation = new_generation();
	touch(fs, &inode, TOUCH_ATIME | TOUCH_CTIME | TOUCH_MTIME | TOUCH_CRTIME);
	err = write_inode(fs, ino, &inode);
	if (err)
		return err;
	*out = ino;
	return touch_ino(fs, dir, TOUCH_CTIME | TOUCH_MTIME);
}

long strata_ext4_hardlink(ext2_filsys fs, ext2_ino_t ino, ext2_ino_t dir, const char *name)
{
	struct ext2_inode_large inode;
	errcode_t err = read_inode(fs, ino, &inode);

	if (err)
		return err;
	if (inode.i_links_count >= EXT2_LINK_MAX)
		return EMLINK;
	err = add_entry(fs, dir, name, ino, inode.i_mode);
	if (err)
		return err;
	inode.i_links_count++;
	touch(fs, &inode, TOUCH_CTIME);
	err = write_inode(fs, ino, &inode);
	if (err)
		return err;
	return touch_ino(fs, dir, TOUCH_CTIME | TOUCH_MTIME);
}

/* ---- Removing and renaming ------------------------------------------------------------ */

/* Removes entry `name` (which must point at `ino`) from `dir` and drops one link of a
 * non-directory, or both links of a directory and the parent's link to it. */
long strata_ext4_remove(ext2_filsys fs, ext2_ino_t dir, const char *name, ext2_ino_t ino,
			int is_dir)
{
	errcode_t err = ext2fs_unlink(fs, dir, name, ino, 0);

	if (err)
		return err;
	err = drop_links(fs, ino, is_dir);
	if (err)
		return err;
	if (is_dir)
		return dir_nlink_add(fs, dir, -1);
	return touch_ino(fs, dir, TOUCH_CTIME | TOUCH_MTIME);
}

/*
 * The steps of rename(2) once Rust has checked it is allowed. `target` is the inode
 * `to` names now (0 if none); a directory target is known to be empty. Nothing is removed
 * before the one step that can fail for lack of space (a new entry in `to_dir`) is done.
 */
long strata_ext4_rename(ext2_filsys fs, ext2_ino_t from_dir, const char *from,
			ext2_ino_t to_dir, const char *to, ext2_ino_t ino, ext2_ino_t target)
{
	struct ext2_inode_large inode, tinode;
	errcode_t err = read_inode(fs, ino, &inode);
	int is_dir = LINUX_S_ISDIR(inode.i_mode);
	int target_is_dir = 0;

	if (err)
		return err;
	if (target) {
		err = read_inode(fs, target, &tinode);
		if (err)
			return err;
		target_is_dir = LINUX_S_ISDIR(tinode.i_mode);
		err = set_entry(fs, to_dir, to, ino, inode.i_mode);
	} else {
		err = add_entry(fs, to_dir, to, ino, inode.i_mode);
	}
	if (err)
		return err;

	err = ext2fs_unlink(fs, from_dir, from, ino, 0);
	if (err)
		return err;

	if (target) {
		/* The replaced inode loses its entry; a directory loses both links and its
		 * parent the link its `..` made. */
		err = drop_links(fs, target, target_is_dir);
		if (err)
			return err;
		if (target_is_dir) {
			err = dir_nlink_add(fs, to_dir, -1);
			if (err)
				return err;
		}
	}

	if (is_dir && from_dir != to_dir) {
		err = set_entry(fs, ino, "..", to_dir, LINUX_S_IFDIR);
		if (err)
			return err;
		err = dir_nlink_add(fs, from_dir, -1);
		if (err)
			return err;
		err = dir_nlink_add(fs, to_dir, +1);
		if (err)
			return err;
	} else {
		err = touch_ino(fs, from_dir, TOUCH_CTIME | TOUCH_MTIME);
		if (err)
			return err;
		if (to_dir != from_dir) {
			err = touch_ino(fs, to_dir, TOUCH_CTIME | TOUCH_MTIME);
			if (err)
				return err;
		}
	}
	return touch_ino(fs, ino, TOUCH_CTIME);
}

/* ---- File contents -------------------------------------------------------------------- */

long strata_ext4_readlink(ext2_filsys fs, ext2_ino_t ino, char *buf, uint32_t cap,
			  uint32_t *len)
{
	struct ext2_inode_large inode;
	errcode_t err = read_inode(fs, ino, &inode);
	uint64_t size;

	*len = 0;
	if (err)
		return err;
	if (!LINUX_S_ISLNK(inode.i_mode))
		return EINVAL;
	size = EXT2_I_SIZE(&inode);
	if (size > cap)
		return EXT2_ET_INODE_CORRUPTED;
	if (ext2fs_is_fast_symlink((struct ext2_inode *)&inode)) {
		if (size > sizeof(inode.i_block))
			return EXT2_ET_INODE_CORRUPTED;
		memcpy(buf, (char *)inode.i_block, (size_t)size);
	} else {
		ext2_file_t file;
		unsigned int got = 0;
		errcode_t cerr;

		/* A slow (one block) or inline-data symlink: the file API reads both. */
		err = ext2fs_file_open(fs, ino, 0, &file);
		if (err)
			return err;
		err = ext2fs_file_read(file, buf, (unsigned int)size, &got);
		cerr = ext2fs_file_close(file);
		if (err)
			return err;
		if (cerr)
			return cerr;
		if (got != size)
			return EXT2_ET_SHORT_READ;
	}
	*len = (uint32_t)size;
	return 0;
}

long strata_ext4_read(ext2_filsys fs, ext2_ino_t ino, uint64_t offset, void *buf,
		      uint32_t len, uint32_t *got)
{
	ext2_file_t file;
	errcode_t err, cerr;
	unsigned int n = 0;

	*got = 0;
	err = ext2fs_file_open(fs, ino, 0, &file);
	if (err)
		return err;
	err = ext2fs_file_llseek(file, offset, EXT2_SEEK_SET, NULL);
	if (!err)
		err = ext2fs_file_read(file, buf, len, &n);
	cerr = ext2fs_file_close(file);
	*got = n;
	return err ? err : cerr;
}

/* Zeroes the tail of the block holding byte `size` (the current end of file), so that a
 * file growing past it reads zeros there whatever the block held. */
static errcode_t zero_tail(ext2_filsys fs, ext2_ino_t ino, uint64_t size)
{
	uint64_t off = size % fs->blocksize;
	blk64_t pblk = 0;
	int ret_flags = 0;
	char *block;
	errcode_t err;

	if (off == 0)
		return 0;
	err = ext2fs_bmap2(fs, ino, NULL, NULL, 0, size / fs->blocksize, &ret_flags, &pblk);
	if (err)
		return err;
	if (pblk == 0 || (ret_flags & BMAP_RET_UNINIT))
		return 0;
	err = ext2fs_get_mem(fs->blocksize, &block);
	if (err)
		return err;
	err = io_channel_read_blk64(fs->io, pblk, 1, block);
	if (!err) {
		memset(block + off, 0, fs->blocksize - off);
		err = io_channel_write_blk64(fs->io, pblk, 1, block);
	}
	ext2fs_free_mem(&block);
	return err;
}

static errcode_t inode_size(ext2_filsys fs, ext2_ino_t ino, uint64_t *size)
{
	struct ext2_inode inode;
	errcode_t err = ext2fs_read_inode(fs, ino, &inode);

	if (err)
		return err;
	if (inode.i_flags & EXT4_INLINE_DATA_FL)
		return EXT2_ET_OP_NOT_SUPPORTED;
	*size = EXT2_I_SIZE(&inode);
	return 0;
}

/* Bytes [offset, offset + len) through the file API: one block at a time through the
 * file's block buffer, any layout (extents, indirect blocks, unwritten extents). */
static errcode_t write_bytes(ext2_filsys fs, ext2_ino_t ino, uint64_t offset, const char *buf,
			     unsigned int len, unsigned int *written)
{
	ext2_file_t file;
	errcode_t err, cerr;

	*written = 0;
	if (len == 0)
		return 0;
	err = ext2fs_file_open(fs, ino, EXT2_FILE_WRITE, &file);
	if (err)
		return err;
	err = ext2fs_file_llseek(file, offset, EXT2_SEEK_SET, NULL);
	if (!err)
		err = ext2fs_file_write(file, buf, len, written);
	/* Close writes the buffered block and the inode (size, blocks). */
	cerr = ext2fs_file_close(file);
	return err ? err : cerr;
}

/* Whole blocks at least this many go the direct way (write_blocks); fewer go through the
 * file API, whose per-block cost is nothing at that size. */
#define DIRECT_MIN_BLOCKS 16

/* Most blocks one device write of write_blocks carries (a bound on the int count of
 * io_channel_write_blk64, far above any chunk the Rust side hands over). */
#define DIRECT_MAX_RUN (1 << 20)

/* Whether written extent `b` continues written extent `a` on disk and both fit one. */
static int continues(const struct ext2fs_extent *a, const struct ext2fs_extent *b)
{
	return !(a->e_flags & EXT2_EXTENT_FLAGS_UNINIT) && !(b->e_flags & EXT2_EXTENT_FLAGS_UNINIT) &&
	       a->e_lblk + a->e_len == b->e_lblk && a->e_pblk + a->e_len == b->e_pblk &&
	       (uint64_t)a->e_len + b->e_len <= EXT_INIT_MAX_LEN;
}

/* Merges the written extent `ex` (the handle's current one) with its neighbours in the same
 * leaf when they continue it: fallocate never extends a written extent without zeroing what
 * it adds, so a file written piece by piece would otherwise get one extent per piece.
 * Only entries that are not the first of their leaf are deleted, so no index key changes;
 * neighbours in other leaves stay apart (one extra extent per leaf at most). */
static errcode_t merge_written(ext2_extent_handle_t h, struct ext2fs_extent ex)
{
	struct ext2fs_extent other;
	errcode_t err;

	err = ext2fs_extent_get(h, EXT2_EXTENT_PREV_SIB, &other);
	if (err && err != EXT2_ET_EXTENT_NO_PREV)
		return err;
	if (!err && continues(&other, &ex)) {
		err = ext2fs_extent_goto(h, ex.e_lblk);
		if (!err)
			err = ext2fs_extent_delete(h, 0);
		if (!err)
			err = ext2fs_extent_goto(h, other.e_lblk);
		if (err)
			return err;
		other.e_len += ex.e_len;
		err = ext2fs_extent_replace(h, 0, &other);
		if (err)
			return err;
		ex = other;
	} else {
		err = ext2fs_extent_goto(h, ex.e_lblk);
		if (err)
			return err;
	}
	err = ext2fs_extent_get(h, EXT2_EXTENT_NEXT_SIB, &other);
	if (err == EXT2_ET_EXTENT_NO_NEXT)
		return 0;
	if (err)
		return err;
	if (!continues(&ex, &other))
		return 0;
	err = ext2fs_extent_delete(h, 0);
	if (!err)
		err = ext2fs_extent_goto(h, ex.e_lblk);
	if (err)
		return err;
	ex.e_len += other.e_len;
	return ext2fs_extent_replace(h, 0, &ex);
}

/* Marks the blocks [lblk, end) written where an unwritten extent maps them. */
static errcode_t mark_written(ext2_extent_handle_t h, blk64_t lblk, blk64_t end)
{
	struct ext2fs_extent ex;
	blk64_t pos = lblk;
	errcode_t err;

	while (pos < end) {
		blk64_t e_end, a, b, l;

		err = ext2fs_extent_goto(h, pos);
		if (err)
			return err;
		err = ext2fs_extent_get(h, EXT2_EXTENT_CURRENT, &ex);
		if (err)
			return err;
		e_end = ex.e_lblk + ex.e_len;
		if (e_end <= pos)
			return EXT2_ET_EXTENT_NOT_FOUND;
		if (!(ex.e_flags & EXT2_EXTENT_FLAGS_UNINIT)) {
			pos = e_end;
			continue;
		}
		if (ex.e_lblk >= lblk && e_end <= end) {
			ex.e_flags &= ~EXT2_EXTENT_FLAGS_UNINIT;
			err = ext2fs_extent_replace(h, 0, &ex);
			if (!err)
				err = merge_written(h, ex);
			if (err)
				return err;
			pos = e_end;
			continue;
		}
		/* An unwritten extent that reaches outside the write (fallocated before): the
		 * part inside is remapped block by block, which splits the extent. */
		a = ex.e_lblk > pos ? ex.e_lblk : pos;
		b = e_end < end ? e_end : end;
		for (l = a; l < b; l++) {
			err = ext2fs_extent_set_bmap(h, l, ex.e_pblk + (l - ex.e_lblk), 0);
			if (err)
				return err;
		}
		pos = b;
	}
	return 0;
}

/*
 * Writes whole blocks [lblk, lblk + count) of an extent-mapped file straight to the device,
 * not through the file API's one-block buffer: the holes are allocated at once as unwritten
 * extents (ext2fs_fallocate), the data goes out in one device write per physically
 * contiguous run (large ones bypass the block cache on the Rust side, which drops what it
 * held of them), and only then are the extents marked written. A failure part-way thus
 * leaves unwritten extents, which read as zeros, never blocks that expose what they held
 * before — the kernel's ext4 works the same way. The size grows to at least `min_size`.
 */
static errcode_t write_blocks(ext2_filsys fs, ext2_ino_t ino, blk64_t lblk, blk64_t count,
			      const char *buf, uint64_t min_size)
{
	struct ext2_inode_large inode;
	ext2_extent_handle_t h = NULL;
	struct ext2fs_extent ex;
	blk64_t end = lblk + count, pos = lblk;
	blk64_t run_l = 0, run_p = 0, run_n = 0;
	errcode_t err, werr;

	err = read_inode(fs, ino, &inode);
	if (err)
		return err;
	/* The extent handles below update `inode` (i_block, i_blocks) and write it when the
	 * tree's root changes; it is written once more at the end whatever happened, so that
	 * i_blocks always counts what was allocated. */
	err = ext2fs_fallocate(fs, EXT2_FALLOCATE_FORCE_UNINIT, ino, (struct ext2_inode *)&inode,
			       ~0ULL, lblk, count);
	if (err)
		goto out;
	err = ext2fs_extent_open2(fs, ino, (struct ext2_inode *)&inode, &h);
	if (err)
		goto out;

	/* The data, run by run. */
	err = ext2fs_extent_goto(h, lblk);
	if (err)
		goto out;
	err = ext2fs_extent_get(h, EXT2_EXTENT_CURRENT, &ex);
	while (!err && pos < end) {
		blk64_t e_end = ex.e_lblk + ex.e_len, n, p;

		if (ex.e_lblk > pos || e_end <= pos) {
			/* fallocate left a hole: never expected, and nothing may be written. */
			err = EXT2_ET_EXTENT_NOT_FOUND;
			break;
		}
		n = (e_end < end ? e_end : end) - pos;
		p = ex.e_pblk + (pos - ex.e_lblk);
		if (run_n && (run_p + run_n != p || run_n + n > DIRECT_MAX_RUN)) {
			err = io_channel_write_blk64(fs->io, run_p, (int)run_n,
						     buf + (run_l - lblk) * fs->blocksize);
			if (err)
				break;
			run_n = 0;
		}
		if (!run_n) {
			run_l = pos;
			run_p = p;
		}
		run_n += n;
		pos += n;
		if (pos < end)
			err = ext2fs_extent_get(h, EXT2_EXTENT_NEXT_LEAF, &ex);
	}
	if (err == EXT2_ET_EXTENT_NO_NEXT)
		err = EXT2_ET_EXTENT_NOT_FOUND;
	if (!err && run_n)
		err = io_channel_write_blk64(fs->io, run_p, (int)run_n,
					     buf + (run_l - lblk) * fs->blocksize);
	if (err)
		goto out;

	err = mark_written(h, lblk, end);
	if (err)
		goto out;
	if (EXT2_I_SIZE(&inode) < min_size) {
		err = ext2fs_inode_size_set(fs, (struct ext2_inode *)&inode, min_size);
		if (err)
			goto out;
	}
out:
	if (h)
		ext2fs_extent_free(h);
	werr = write_inode(fs, ino, &inode);
	return err ? err : werr;
}

long strata_ext4_write(ext2_filsys fs, ext2_ino_t ino, uint64_t offset, const void *buf,
		       uint32_t len, uint32_t *written)
{
	const char *data = buf;
	struct ext2_inode inode;
	errcode_t err;
	unsigned int n = 0;
	uint64_t size, bs = fs->blocksize, head = 0, blocks = 0;

	*written = 0;
	err = ext2fs_read_inode(fs, ino, &inode);
	if (err)
		return err;
	if (inode.i_flags & EXT4_INLINE_DATA_FL)
		return EXT2_ET_OP_NOT_SUPPORTED;
	size = EXT2_I_SIZE(&inode);
	if (offset > size) {
		err = zero_tail(fs, ino, size);
		if (err)
			return err;
	}
	/* The direct way needs extents and one block per cluster (an implied cluster would
	 * need the allocation rules of bigalloc, which the file API has). */
	if ((inode.i_flags & EXT4_EXTENTS_FL) && EXT2FS_CLUSTER_RATIO(fs) == 1) {
		head = (bs - offset % bs) % bs;
		if (head > len)
			head = len;
		blocks = (len - head) / bs;
	}
	if (blocks < DIRECT_MIN_BLOCKS) {
		err = write_bytes(fs, ino, offset, data, len, &n);
		*written = n;
	} else {
		/* The partial block in front, the whole blocks, the partial block behind; in
		 * that order, so that the size grows with what was written. */
		uint64_t mid = offset + head, tail = len - head - blocks * bs;

		err = write_bytes(fs, ino, offset, data, (unsigned int)head, &n);
		*written = n;
		if (!err)
			err = write_blocks(fs, ino, mid / bs, blocks, data + head,
					   mid + blocks * bs);
		if (!err) {
			*written = (uint32_t)(head + blocks * bs);
			err = write_bytes(fs, ino, mid + blocks * bs, data + head + blocks * bs,
					  (unsigned int)tail, &n);
			*written += n;
		}
	}
	if (err)
		return err;
	return touch_ino(fs, ino, TOUCH_CTIME | TOUCH_MTIME);
}

long strata_ext4_truncate(ext2_filsys fs, ext2_ino_t ino, uint64_t new_size)
{
	ext2_file_t file;
	errcode_t err, cerr;
	uint64_t size;

	err = inode_size(fs, ino, &size);
	if (err)
		return err;
	if (new_size > size) {
		err = zero_tail(fs, ino, size);
		if (err)
			return err;
	}
	err = ext2fs_file_open(fs, ino, EXT2_FILE_WRITE, &file);
	if (err)
		return err;
	/* Frees the blocks past the new end and zeroes the rest of the last block. */
	err = ext2fs_file_set_size2(file, new_size);
	cerr = ext2fs_file_close(file);
	if (err)
		return err;
	if (cerr)
		return cerr;
	return touch_ino(fs, ino, TOUCH_CTIME | TOUCH_MTIME);
}

/* The mapped blocks of logical blocks [lblk, lblk + count): how many are not mapped yet
 * (what writing them would allocate). */
long strata_ext4_unmapped(ext2_filsys fs, ext2_ino_t ino, uint64_t lblk, uint64_t count,
			  uint64_t *unmapped)
{
	struct ext2_inode inode;
	errcode_t err = ext2fs_read_inode(fs, ino, &inode);
	uint64_t i;

	*unmapped = 0;
	if (err)
		return err;
	for (i = 0; i < count; i++) {
		blk64_t pblk = 0;
		int flags = 0;

		err = ext2fs_bmap2(fs, ino, &inode, NULL, 0, lblk + i, &flags, &pblk);
		if (err)
			return err;
		if (pblk == 0)
			(*unmapped)++;
	}
	return 0;
}

/* ---- Allocation ----------------------------------------------------------------------- */

typedef void (*strata_run_cb)(void *ctx, uint64_t block, uint64_t count);

/* Every run of in-use blocks in the block bitmap, in order. */
long strata_ext4_used_runs(ext2_filsys fs, strata_run_cb cb, void *ctx)
{
	blk64_t start = fs->super->s_first_data_block;
	blk64_t end = ext2fs_blocks_count(fs->super);
	blk64_t pos;
	errcode_t err;

	if (!fs->block_map) {
		err = ext2fs_read_block_bitmap(fs);
		if (err)
			return err;
	}
	if (end == 0 || end <= start)
		return 0;
	end -= 1;
	pos = start;
	while (pos <= end) {
		blk64_t first_set = 0, first_zero = 0;

		err = ext2fs_find_first_set_block_bitmap2(fs->block_map, pos, end, &first_set);
		if (err == ENOENT)
			break;
		if (err)
			return err;
		err = ext2fs_find_first_zero_block_bitmap2(fs->block_map, first_set, end,
							   &first_zero);
		if (err == ENOENT)
			first_zero = end + 1;
		else if (err)
			return err;
		if (first_zero <= first_set)
			return EXT2_ET_FILESYSTEM_CORRUPTED;
		cb(ctx, first_set, first_zero - first_set);
		pos = first_zero;
	}
	return 0;
}
